"""The natural Bytewax word count, for scripts/benchmarks/wordcount.py to time.

Reads every *.txt in $WC_CORPUS, writes "word count" lines into $WC_OUT.
Run with ``python -m bytewax.run bytewax_wordcount:flow`` from this directory.
"""

import os
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.files import DirSink, DirSource
from bytewax.dataflow import Dataflow

flow = Dataflow("wordcount")
lines = op.input("lines", flow, DirSource(Path(os.environ["WC_CORPUS"]), glob_pat="*.txt"))
words = op.flat_map("split", lines, str.split)
counts = op.count_final("count", words, lambda word: word)
op.output("out", op.map("format", counts, lambda kv: (kv[0], f"{kv[0]} {kv[1]}")),
          DirSink(Path(os.environ["WC_OUT"]), file_count=4))
