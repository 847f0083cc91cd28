"""What the ingress remembers about frame ids: answers for retries, and frames in progress for retries to join."""

from __future__ import annotations

from edge_node.ingress.answer_memory import AnswerMemory
from tests.unit.ingress_frames import make_frame


def test_a_retry_gets_the_remembered_answer_of_its_own_robot_and_id() -> None:
    memory = AnswerMemory()
    memory.remember(make_frame(frame_id="f-1"), "results/cam-7", b"verdict")
    assert memory.answer(make_frame(frame_id="f-1", mid=9)) == ("results/cam-7", b"verdict")
    assert memory.answer(make_frame(frame_id="f-2")) is None
    assert memory.answer(make_frame(frame_id="f-1", robot="cam-8")) is None, "frame ids are per robot"


def test_the_memory_is_bounded_and_forgets_the_oldest_answers_first() -> None:
    memory = AnswerMemory(capacity=3)
    for k in range(5):
        memory.remember(make_frame(frame_id=f"f-{k}"), "t", str(k).encode())
    assert len(memory) == 3
    assert [memory.answer(make_frame(frame_id=f"f-{k}")) for k in range(5)] == [
        None,
        None,
        ("t", b"2"),
        ("t", b"3"),
        ("t", b"4"),
    ]


def test_frames_without_an_id_are_neither_remembered_nor_joined() -> None:
    memory = AnswerMemory()
    unnamed = make_frame(frame_id=None)
    memory.remember(unnamed, "t", b"answer")
    assert memory.answer(unnamed) is None and len(memory) == 0
    assert memory.begin(unnamed) and memory.begin(unnamed), "each unnamed frame is judged"
    assert memory.release(unnamed) == []


def test_a_retry_of_a_frame_in_progress_joins_it_until_it_is_released() -> None:
    memory = AnswerMemory()
    first, retry, again = (make_frame(frame_id="f-1", mid=m) for m in (1, 2, 3))
    assert memory.begin(first)
    assert not memory.begin(retry)
    assert not memory.begin(again)
    assert memory.release(first) == [retry, again]
    assert memory.release(first) == []
    assert memory.begin(make_frame(frame_id="f-1", mid=4)), "once released, the id may be judged again"
