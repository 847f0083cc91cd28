import pytest
from pydantic import ValidationError

from contracts import wire
from contracts.slice_spec import BatchSpec, ReplicaSpec, SliceSpec


def test_topics_round_trip() -> None:
    frames = wire.topic("acme", "line-1", "cam-7", wire.TopicKind.FRAMES)
    assert frames == "lineside/acme/line-1/cam-7/frames"
    parsed = wire.parse_topic(frames)
    assert (parsed.tenant, parsed.line, parsed.robot, parsed.kind) == ("acme", "line-1", "cam-7", wire.TopicKind.FRAMES)
    assert parsed.sibling(wire.TopicKind.RESULTS) == "lineside/acme/line-1/cam-7/results"


@pytest.mark.parametrize("bad", ["#", "+", "a/b", "Acme", "", "x" * 64, "$sys"])
def test_names_cannot_escape_their_topic_level(bad: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        wire.topic(bad, "line-1", "cam-7", wire.TopicKind.FRAMES)


@pytest.mark.parametrize(
    "topic",
    ["lineside/acme/line-1/frames", "other/acme/l/r/frames", "lineside/acme/l/r/pictures", "lineside/a/+/r/frames"],
)
def test_foreign_topics_are_rejected(topic: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with what is wrong
        wire.parse_topic(topic)


def test_shared_subscription_covers_one_line() -> None:
    assert wire.shared_frames_filter("slice-a", "acme", "line-1") == "$share/slice-a/lineside/acme/line-1/+/frames"


def test_result_schema_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="colour"):
        wire.ErrorReply(
            frame_id="f", tenant="t", line="l", robot="r", slice="s", node="n",
            code=wire.ErrorCode.BAD_IMAGE, detail="d", colour="red",  # type: ignore[call-arg]
        )  # fmt: skip


def test_replica_bounds_are_quoted_in_the_error() -> None:
    with pytest.raises(ValidationError, match=r"max_replicas \(2\) must be >= min_replicas \(5\)"):
        ReplicaSpec(min_replicas=5, max_replicas=2)


def test_ingress_batch_cannot_exceed_model_batch() -> None:
    with pytest.raises(ValidationError, match=r"ingress_batch \(64\) must be <= max_batch_size \(8\)"):
        BatchSpec(max_batch_size=8, ingress_batch=64)


def test_slice_spec_typo_names_the_field() -> None:
    with pytest.raises(ValidationError, match="max_replica"):
        SliceSpec.model_validate({"name": "s", "tenant": "acme", "lines": ["l1"], "max_replica": 3})


def test_slice_spec_subscribes_to_each_line() -> None:
    spec = SliceSpec(name="s1", tenant="acme", lines=["l1", "l2"])
    assert spec.frame_filters == ["$share/s1/lineside/acme/l1/+/frames", "$share/s1/lineside/acme/l2/+/frames"]
    with pytest.raises(ValidationError, match="line"):
        SliceSpec(name="s1", tenant="acme", lines=["l/#"])


def _telemetry(**fields: object) -> wire.Telemetry:
    histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    body = {"replica": "r1", "start": 100.0, "end": 105.0, "frames": 10, "fails": 1, "errors": 3}
    return wire.Telemetry.model_validate({**body, "latency_ms_histogram": histogram, **fields})


def test_telemetry_says_which_error_codes_its_errors_were() -> None:
    report = _telemetry(error_codes={"bad_image": 2, "internal": 1})
    assert report.error_codes == {wire.ErrorCode.BAD_IMAGE: 2, wire.ErrorCode.INTERNAL: 1}
    assert wire.Telemetry.model_validate_json(report.model_dump_json()) == report
    assert _telemetry().error_codes == {}  # an older ingress sends no codes


def test_telemetry_error_codes_cannot_exceed_the_errors_or_name_unknown_codes() -> None:
    with pytest.raises(ValidationError, match=r"error_codes add up to 4, more than errors \(3\)"):
        _telemetry(error_codes={"bad_image": 2, "internal": 2})
    with pytest.raises(ValidationError, match="error_codes"):
        _telemetry(error_codes={"not_a_code": 1})
    with pytest.raises(ValidationError, match="error_codes"):
        _telemetry(error_codes={"bad_image": -1})
