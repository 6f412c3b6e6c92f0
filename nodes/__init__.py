"""nodes: the dataflow vocabulary gossipflow flows are written with.

    from nodes import Flow, sources, sinks

    flow = Flow("wordcount")
    (flow.source(sources.files("corpus/*.txt"))
         .flat_map(str.split)
         .key_by(lambda w: w)
         .count()
         .sink(sinks.table()))

Modules: ``flow`` (Flow, Stream, graph checks), ``operators`` (stateless,
batch-compiled), ``stateful`` (keyed operators), ``sources``, ``sinks``,
``plan`` (stages: the contract with the runtime), ``loader`` (flow files),
``testing`` (run a flow in one process), ``errors`` (FlowError); event time:
``windows`` (tumbling, sliding, session, Windowed), ``eventtime`` (timestamps,
watermarks), ``timed`` (stateless steps on timed records), ``windowops`` and
``joins`` (the heads of window and join stages).
"""

from nodes import sinks, sources, windows
from nodes.errors import FlowError
from nodes.flow import Flow, Stream
from nodes.loader import load_flow

__all__ = ["Flow", "FlowError", "Stream", "load_flow", "sinks", "sources", "windows"]
