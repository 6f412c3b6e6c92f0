"""Every error a user can cause: the message names the step, its file:line, and the fix."""

from __future__ import annotations

import sys

import pytest

from nodes import Flow, FlowError, sinks, sources
from nodes.testing import run

HERE = "test_nodes_errors.py"
IDENT_LINE = "ident = lambda r: r  # noqa: E731"


def lineno() -> int:
    """The caller's current line."""
    return sys._getframe(1).f_lineno


def gen(items: list) -> sources.GenerateSource:
    return sources.generate(len(items), items.__getitem__)


def failing_run(flow: Flow, **kw) -> FlowError:
    with pytest.raises(FlowError) as err:
        run(flow, **kw)
    return err.value


# -- declaration ----------------------------------------------------------------------------

def test_keyed_operator_on_plain_stream():
    flow = Flow("f")
    line = lineno() + 1
    words = flow.source(gen(["a"])).key_by(str).map(str)
    at = lineno() + 2
    with pytest.raises(FlowError) as err:
        words.count()
    message = str(err.value)
    assert f"count() at {HERE}:{at} needs a keyed stream" in message.replace("tests/", "")
    assert f"'map' (map at tests/{HERE}:{line}) produces plain records" in message
    assert "map drops the key. Call .key_by(fn) first" in message and "map_values" in message
    assert err.value.where.endswith(f"{HERE}:{at}")


@pytest.mark.parametrize("op", ["sum", "reduce", "fold", "stateful_map", "map_values"])
def test_every_keyed_operator_needs_a_keyed_stream(op):
    stream = Flow("f").source(gen([1]))
    args = {"sum": (), "reduce": (max,), "fold": (0, max), "stateful_map": (max,),
            "map_values": (str,)}[op]
    with pytest.raises(FlowError, match=rf"{op}\(\) at .*{HERE}:\d+ needs a keyed stream"):
        getattr(stream, op)(*args)


def test_table_sink_needs_a_keyed_stream():
    stream = Flow("f").source(gen([1]))
    with pytest.raises(FlowError, match=r"sinks\.table\(\) at .* needs a keyed stream .*"
                                        r"'source' \(source at .*\) produces plain records"):
        stream.sink(sinks.table())


def test_merge_of_plain_and_keyed_is_plain():
    flow = Flow("f")
    a = flow.source(gen(["a"]), name="a").key_by(str)
    b = flow.source(gen(["b"]), name="b")
    with pytest.raises(FlowError, match="'merge' .* produces plain records"):
        a.merge(b).count()


def test_step_names_are_generated_and_unique():
    flow = Flow("f")
    s = flow.source(gen([1])).map(str).map(str, name="map_3").map(str).map(str)
    s.sink(sinks.publish())
    assert [st.name for st in flow.steps] == [
        "source", "map", "map_3", "map_2", "map_4", "publish"]
    at = lineno() + 2
    with pytest.raises(FlowError) as err:
        s.filter(bool, name="map_2")
    assert "the step name 'map_2' is already used by the map at" in str(err.value)
    assert f"{HERE}:{at}" in str(err.value)


@pytest.mark.parametrize("bad", [None, 3, "str.upper"])
def test_operator_needs_a_function(bad):
    with pytest.raises(FlowError, match=rf"map\(\) at .*{HERE}:\d+ needs a function; got"):
        Flow("f").source(gen([1])).map(bad)


def test_bad_arguments_to_flow_source_and_sink():
    with pytest.raises(FlowError, match="Flow name must be"):
        Flow("word count")
    flow = Flow("f")
    with pytest.raises(FlowError, match=r"needs a source such as sources\.files"):
        flow.source("corpus/*.txt")
    with pytest.raises(FlowError, match=r"needs a sink such as sinks\.table\(\)"):
        flow.source(gen([1])).sink(print)


def test_merge_across_flows():
    a, b = Flow("a").source(gen([1])), Flow("b").source(gen([2]))
    with pytest.raises(FlowError, match="belongs to flow 'b', not 'a'"):
        a.merge(b)


# -- validation -----------------------------------------------------------------------------

def test_no_source_and_no_sink():
    at = lineno() + 1
    flow = Flow("empty")
    with pytest.raises(FlowError,
                       match=rf"flow 'empty' \(created at .*{HERE}:{at}\) has no source"):
        flow.validate()
    flow.source(gen([1])).map(str)
    with pytest.raises(FlowError, match="has no sink"):
        flow.validate()


def test_stream_leading_nowhere_names_the_step():
    flow = Flow("f")
    s = flow.source(gen([1]))
    s.sink(sinks.publish())
    at = lineno() + 1
    s.map(str, name="orphan")
    with pytest.raises(FlowError) as err:
        run(flow)
    assert f"a stream leads nowhere after 'orphan' (map at tests/{HERE}:{at})" in str(err.value)
    assert ".sink(" in str(err.value) and err.value.step == "orphan"


# -- user functions at run time -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["map", "filter", "flat_map", "inspect", "key_by"])
def test_stateless_function_that_raises(kind):
    def explode(record):
        if record == "boom":
            raise ValueError("no booms allowed")
        return [record] if kind == "flat_map" else record
    fn_line = explode.__code__.co_firstlineno
    flow = Flow("f")
    stream = flow.source(gen(["ok", "fine", "boom", "never"]))
    at = lineno() + 1
    getattr(stream, kind)(explode, name="mine").sink(sinks.publish())
    err = failing_run(flow, batch_size=1000)
    message = str(err)
    assert f"step 'mine' ({kind}, declared at tests/{HERE}:{at}) failed" in message
    assert f"explode at tests/{HERE}:{fn_line} raised ValueError: no booms allowed" in message
    assert "record: 'boom'" in message
    assert isinstance(err.__cause__, ValueError) and err.step == "mine"


def test_map_values_error_shows_the_keyed_record():
    flow = Flow("f")
    (flow.source(gen(["a", "b"])).key_by(str).map_values(lambda v: {"b": 1}[v])
         .sink(sinks.publish()))
    assert "record: ('a', 'a')" in str(failing_run(flow))


def test_flat_map_returning_non_iterable_says_what_to_return():
    flow = Flow("f")
    flow.source(gen([1, 2])).flat_map(lambda n: n).sink(sinks.publish())
    message = str(failing_run(flow))
    assert "must return an iterable" in message and "return [] for none" in message


def test_long_records_are_truncated():
    flow = Flow("f")
    flow.source(gen(["x" * 5000])).map(int).sink(sinks.publish())
    message = str(failing_run(flow))
    assert "int (built-in) raised ValueError" in message
    assert "record: 'xxxx" in message and "..." in message and len(message) < 1200


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bad", [42, None, ("a", 1), ["unhashable"]])
def test_key_by_returning_a_non_string(fused, bad):
    flow = Flow("f")
    at = lineno() + 2  # the lambda's line; the key_by call starts on the line before
    keyed = flow.source(gen(["a", "b", "c"])).key_by(
        lambda r: bad if r == "b" else r, name="by_user")
    (keyed.count() if fused else keyed).sink(sinks.table())
    message = str(failing_run(flow))
    assert f"step 'by_user' (key_by, declared at tests/{HERE}:{at - 1})" in message
    assert "key_by needs a function returning str or bytes" in message
    assert f"<lambda> at tests/{HERE}:{at}" in message
    assert f"returned {type(bad).__name__} {bad!r}" in message
    assert "for record 'b'" in message and "wrap it in str()" in message


def test_reduce_fold_and_stateful_map_errors():
    def bad_reduce(a, b):
        return a + b

    flow = Flow("f")
    s = flow.source(gen(["1", "2", "x"])).key_by(lambda r: "k")
    s.map_values(lambda v: int(v) if v != "x" else None).reduce(bad_reduce, name="r").sink(
        sinks.table(), name="t1")
    err = failing_run(flow)
    assert "step 'r' (reduce" in str(err) and "bad_reduce at" in str(err)
    assert "raised TypeError" in str(err) and ": ('k', None)" in str(err)

    flow = Flow("f")
    flow.source(gen([1, 2])).key_by(lambda r: "k").fold(lambda: 1 / 0, max, name="fo").sink(
        sinks.table())
    err = failing_run(flow)
    assert "step 'fo' (fold" in str(err) and "its init <lambda> at" in str(err)
    assert "ZeroDivisionError" in str(err) and "zero-argument callable" in str(err)

    flow = Flow("f")
    flow.source(gen([1, 2])).key_by(lambda r: "k").stateful_map(
        lambda s, v: v, name="sm").sink(sinks.publish())
    err = failing_run(flow)
    assert "step 'sm' (stateful_map" in str(err)
    assert "must return a pair (new_state, output); it returned int 1 for key 'k'" in str(err)


def test_sum_of_non_numbers():
    flow = Flow("f")
    flow.source(gen(["1", "2"])).key_by(lambda r: "k").sum(name="total").sink(sinks.table())
    message = str(failing_run(flow))
    assert "step 'total' (sum" in message
    assert "sum() needs int or float values; got str '1' for key 'k'" in message
    assert ".map_values(float)" in message


def test_files_sink_with_records_json_cannot_hold(tmp_path):
    flow = Flow("f", base_dir=tmp_path)
    flow.source(gen([1, 2])).map(lambda n: {n}).sink(sinks.files("out"), name="out")
    message = str(failing_run(flow))
    assert "step 'out' (sink" in message and "record {1} cannot be written as JSON" in message


def test_unbounded_source_needs_a_limit():
    flow = Flow("f")
    flow.source(sources.generate(None, str), name="forever").sink(sinks.publish())
    message = str(failing_run(flow))
    assert "step 'forever' (source" in message and "run(..., limit=N)" in message


def test_run_arguments_are_checked():
    flow = Flow("f")
    flow.source(gen([1])).sink(sinks.publish())
    with pytest.raises(ValueError, match="partitions as an int >= 1"):
        run(flow, partitions=0)
    with pytest.raises(ValueError, match="batch_size as an int >= 1"):
        run(flow, batch_size=1.5)


def test_result_accessors_say_which_sinks_exist():
    flow = Flow("f")
    s = flow.source(gen(["a"])).key_by(str)
    s.sink(sinks.table(), name="one")
    s.sink(sinks.table(), name="two")
    result = run(flow)
    with pytest.raises(LookupError, match="table sinks: 'one', 'two'"):
        result.table()
    assert result.table("two") == {"a": "a"}
    with pytest.raises(LookupError, match="publish sinks: none"):
        _ = result.published


def test_callables_are_described_by_file_and_line():
    import functools
    from dataclasses import dataclass

    from nodes.errors import describe_fn

    @dataclass
    class Order:
        user: str

    class Parser:
        def __init__(self):
            pass

        def parse(self, line):
            return line

    def helper(a, b):
        return a

    line = Parser.parse.__code__.co_firstlineno
    assert describe_fn(Parser().parse) == f"Parser.parse at tests/{HERE}:{line}"
    assert describe_fn(functools.partial(helper, 1)).startswith(f"helper at tests/{HERE}:")
    assert describe_fn(Parser).startswith(f"Parser at tests/{HERE}:")
    assert describe_fn(Order) == "Order (class)"
    assert describe_fn(str.split) == "str.split (built-in)"
    ident = lambda r: r  # noqa: E731
    assert describe_fn(ident) == f"<lambda> at tests/{HERE}:{lineno() - 1} (`{IDENT_LINE}`)"
