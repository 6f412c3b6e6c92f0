"""Loading a flow file the way every daemon does: from its source text.

A submitted flow travels as text. ``load_flow`` executes it as a module
with ``__file__`` set to its path (so relative paths resolve next to it and
errors name it), finds the one Flow defined at module level and validates
it. Anything that goes wrong becomes a FlowError that names the file and
line: a syntax error, an exception while running the file (an import that
fails, a typo), no Flow or several, or an invalid graph.

Example:
    >>> text = '''
    ... from nodes import Flow, sources, sinks
    ... flow = Flow("numbers")
    ... flow.source(sources.generate(3, str)).sink(sinks.publish())
    ... '''
    >>> load_flow(text, "/tmp/numbers.py").name
    'numbers'
"""

from __future__ import annotations

import linecache
import sys
import traceback
import types

from nodes.errors import FlowError, short_path
from nodes.flow import Flow

MODULE_NAME = "__gossipflow_flow__"


def load_flow(source_text: str, path: str) -> Flow:
    """Execute a flow file's text and return its validated Flow.

    Args:
        source_text: the file's contents.
        path: its path (``__file__`` of the module; the flow's base_dir defaults
            to its directory). The file itself is not read.

    Returns:
        The single Flow defined at the file's module level.

    Raises:
        FlowError: syntax error, exception while executing, no Flow or several,
            or an invalid flow. The message starts with "file:line".
    """
    where = short_path(path)
    linecache.cache[path] = (len(source_text), None, source_text.splitlines(True), path)
    try:
        code = compile(source_text, path, "exec", dont_inherit=True)
    except SyntaxError as err:
        line = (err.text or "").strip()
        raise FlowError(f"{where}:{err.lineno}: syntax error: {err.msg}"
                        + (f"\n    {line}" if line else ""), where=f"{where}:{err.lineno}") from err
    except ValueError as err:  # e.g. null bytes
        raise FlowError(f"{where}: cannot compile the flow file: {err}", where=where) from err
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = path
    previous = sys.modules.get(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    try:
        exec(code, module.__dict__)
    except FlowError:
        raise
    except (Exception, SystemExit) as err:
        line = _line_in(err, path)
        what = "import failed" if isinstance(err, ImportError) else "error while loading the flow"
        raise FlowError(f"{where}:{line}: {what}: {type(err).__name__}: {err}",
                        where=f"{where}:{line}") from err
    finally:
        if previous is None:
            sys.modules.pop(MODULE_NAME, None)
        else:
            sys.modules[MODULE_NAME] = previous
    flows = list({id(v): v for v in vars(module).values() if isinstance(v, Flow)}.values())
    if not flows:
        raise FlowError(f"{where}: defines no Flow at module level: create one, e.g."
                        " `flow = Flow('wordcount')`, and build the dataflow on it", where=where)
    if len(flows) > 1:
        names = ", ".join(f"'{f.name}' (created at {f.where})" for f in flows)
        raise FlowError(f"{where}: defines {len(flows)} flows at module level ({names});"
                        " a flow file must define exactly one", where=where)
    flows[0].validate()
    return flows[0]


def _line_in(err: BaseException, path: str) -> int:
    """The last line of ``path`` in the exception's traceback (0 if none)."""
    line = 0
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == path:
            line = frame.lineno or 0
    return line
