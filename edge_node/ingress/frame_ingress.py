"""One ingress replica: frames in from the MQTT session, through batching to the model, answers out.

This module wires the pieces together and does what touches more than one of
them: deciding per frame between memory, refusal and the model, publishing the
answers, acknowledging frames once their answers are confirmed, counting, and
leaving the line on the way out. The pieces:

* ``mqtt_session``: the frames connection (persistent session, manual acks, backpressure);
* ``answer_memory``: answered frame ids and frames in progress, so retries cost no inference;
* ``batching``: batches that grow with the load, and model calls with retries;
* ``replies``: the answers themselves, built without I/O;
* ``rollout``: a rollout's candidate model (canary routing by robot, shadow judging).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTMessageInfo

from contracts import wire
from contracts.slice_spec import RolloutSpec, SliceSpec
from edge_node.ingress import replies
from edge_node.ingress.answer_memory import AnswerMemory
from edge_node.ingress.batching import Batcher, InferFn, judge
from edge_node.ingress.counts import Counts
from edge_node.ingress.frames import Frame
from edge_node.ingress.mqtt_session import FrameSession, mqtt_client
from edge_node.ingress.rate_limit import RobotRateLimiter
from edge_node.ingress.rollout import Candidate, is_model_error
from edge_node.telemetry import TelemetryWindow

log = logging.getLogger(__name__)

ANSWER_CONFIRM_S = 30.0
"""How long an answer may wait for the broker's PUBACK before its frame is left for the broker to redeliver."""


def confirmed(info: MQTTMessageInfo, timeout_s: float) -> bool:
    """Has the broker acknowledged this publish (waiting up to ``timeout_s``)?

    paho's ``wait_for_publish`` raises at once for a message published while its connection is down, though
    paho queued it and sends it when the connection is back. An answer published in that moment (the frames
    connection back before the answers' one, after a broker restart) then left its frame unacknowledged on the
    frames connection for good; enough of them filled the ingress's in-flight window and it stopped reading
    frames (chaos scenario 1: 622 of 925 frames lost). So: wait for the acknowledgement whatever paho said."""
    if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_AGAIN):
        return False
    deadline = time.monotonic() + timeout_s
    with info._condition:  # paho sets _published under it on the PUBACK
        while not info._published and (left := deadline - time.monotonic()) > 0:
            info._condition.wait(min(left, 0.5))
        return bool(info._published)


RECENT_ANSWER_S = 3.0
"""A frame id answered this recently is not answered again: that answer is still on its way to the robot."""

ObserveFn = Callable[[str, float], None]
"""Told of every answer: its outcome (``verdict_pass``, ``error_bad_image``, ...) and ms inside the slice."""

Reply = tuple[Frame, str, bytes]
"""A frame, and the topic and payload of its answer."""


class FrameIngress:
    """One ingress replica's MQTT consumer and result publisher."""

    def __init__(
        self,
        spec: SliceSpec,
        infer: InferFn,
        *,
        client_id: str,
        node: str,
        model: str,
        observe: ObserveFn | None = None,
    ) -> None:
        self.spec = spec
        self.client_id = client_id
        self.node = node
        self.model = model
        self.counts = Counts()
        self.telemetry = TelemetryWindow(client_id) if spec.telemetry_period_s else None
        self._infer = infer
        self._observe = observe
        self._replier = replies.Replier(spec.name, node, model)
        self.candidate: Candidate | None = None  # a rollout's candidate model (``set_candidate``)
        self._memory = AnswerMemory()
        self._rates = RobotRateLimiter()
        self._stop = threading.Event()
        self._queue: queue.Queue[Frame] = queue.Queue()
        self._session = FrameSession(
            spec, client_id, deliver=self._deliver, counts=self.counts, stop=self._stop,
            unnamed_prefix=f"{node}-{id(self):x}", peer_gone=self._adopt,
        )  # fmt: skip
        self._adopted: dict[str, tuple[FrameSession, threading.Event]] = {}
        """Sessions of dead frames connections of the slice this replica is answering and ending."""
        self._adopted_lock = threading.Lock()
        self.connected = self._session.connected
        self.subscribed = self._session.subscribed
        self._publisher = mqtt_client(spec.broker, f"{client_id}-out", manual_ack=False)
        self._publisher.max_inflight_messages_set(max(spec.max_inflight_frames * 2, 20))
        self._publisher.max_queued_messages_set(0)
        self._batcher = Batcher(self._queue, self._handle_batch, spec.batch, stop=self._stop, name=client_id)
        self._reporter = threading.Thread(target=self._report_loop, name=f"{client_id}-telemetry", daemon=True)

    # --- lifecycle -----------------------------------------------------------

    def set_candidate(self, rollout: RolloutSpec | None, infer: InferFn | None = None, model: str = "") -> None:
        """Start, step or end a rollout on this replica without restarting it. Frames already handed to the
        previous candidate are routed again by the new one (or answered by the current model), so a robot is
        answered by the model its route names when its frame is judged. The previous candidate's last figures
        are published once its frames are done."""
        previous = self.candidate
        if rollout is not None and infer is not None:
            replier = replies.Replier(self.spec.name, self.node, model)
            concurrency = self.spec.batch.ingress_concurrency
            self.candidate = Candidate(rollout, infer, replier, replica=self.client_id, concurrency=concurrency)
        else:
            self.candidate = None
        if previous is not None:
            threading.Thread(target=self._retire, args=(previous,), name=f"{self.client_id}-candidate-end",
                             daemon=True).start()  # fmt: skip

    def _retire(self, candidate: Candidate) -> None:
        """Let the previous candidate finish the frames it holds, then publish its last figures."""
        candidate.stop()
        if self.telemetry is not None:
            self._publish_rollout(candidate)

    def start(self) -> None:
        """Connect (persistent session) and start consuming."""
        broker = self.spec.broker
        self._publisher.connect_async(broker.host, broker.port, broker.keepalive_s, clean_start=True)
        self._publisher.loop_start()
        self._session.start()
        self._batcher.start()
        if self.telemetry is not None:
            self._reporter.start()

    def stop(self, drain_s: float = 15.0) -> None:
        """Leave the line gracefully: unsubscribe, answer every frame already delivered, end the session.

        A replica that Serve replaces (rolling update, scale-down) may come back under another
        rank, i.e. another client id; a persistent session left behind with frames in it would
        keep receiving its share of the line's frames with nobody reading them. So the replica
        first leaves the shared subscriptions, answers and acknowledges what the broker already
        routed to it, and then disconnects with a session expiry of 0. If that does not finish
        within ``drain_s`` the session is kept, so that its frames are not lost.
        """
        drained = self._drain(drain_s) if self.connected.is_set() else False
        self._stop.set()
        self._batcher.join()
        if (candidate := self.candidate) is not None:
            candidate.stop()
        self._session.join()
        with self._adopted_lock:
            adopted = list(self._adopted.values())
        for session, stop in adopted:
            stop.set()
            session.join()
        if self.telemetry is not None:
            self._reporter.join(timeout=5)
            self._publish_telemetry()
        self._session.disconnect(end_session=drained)
        self._publisher.disconnect()
        self._publisher.loop_stop()

    def _drain(self, drain_s: float) -> bool:
        """Leave the subscriptions and wait until every delivered frame is acknowledged and none arrives."""
        self._session.leave()
        deadline = time.monotonic() + drain_s
        received, quiet_since = self.counts["frames_received"], time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if self.counts["frames_received"] != received:
                received, quiet_since = self.counts["frames_received"], time.monotonic()
            elif self._session.emptied and time.monotonic() - quiet_since > 0.5:
                log.info("ingress %s left the line with every delivered frame answered", self.client_id)
                return True
        log.warning("ingress %s still had %d frames after %.0fs; keeping its session", self.client_id,
                    self._session.ledger.backlog, drain_s)  # fmt: skip
        return False

    # --- sessions of dead peers (chaos scenario 7) ----------------------------------

    def _adopt(self, client_id: str) -> None:
        """The broker announced (its will) that another frames connection of this slice died and did not come
        back: take its session over in a thread of its own. Only ids this replica can log in as (the same login
        prefix: another site's overflow ingress has its own secret) and not already being adopted."""
        prefix, sep, index = client_id.rpartition(".") if "." in self.client_id else client_id.rpartition("-")
        own_prefix = self.client_id.rpartition(sep)[0] if sep else ""
        if not sep or prefix != own_prefix or not index.isdigit() or client_id == self.client_id:
            log.warning("ignoring an announcement of %r: not a frames connection this replica can adopt",
                        client_id[:80])  # fmt: skip
            return
        with self._adopted_lock:
            if client_id in self._adopted or self._stop.is_set():
                return
            stop = threading.Event()
            session = FrameSession(
                self.spec, client_id, deliver=self._deliver, counts=self.counts, stop=stop,
                unnamed_prefix=f"{self.node}-{id(self):x}-{index}", adopting=True,
            )  # fmt: skip
            self._adopted[client_id] = (session, stop)
        threading.Thread(target=self._answer_adopted, args=(session, stop), name=f"{client_id}-adopted",
                         daemon=True).start()  # fmt: skip

    def _answer_adopted(self, session: FrameSession, stop: threading.Event, limit_s: float = 120.0) -> None:
        """Connect as the dead connection, leave its subscriptions, answer every frame its session held, end it.
        If it cannot finish (the replica came back and took its session, or frames keep coming), the session
        is left as it is: nothing it holds is acknowledged unanswered."""
        self.counts.add("sessions_adopted")
        session.start()
        deadline = time.monotonic() + limit_s
        received, quiet_since, ended = session.received, time.monotonic(), False
        while time.monotonic() < deadline and not stop.is_set() and session.running:
            time.sleep(0.1)
            if session.received != received:
                received, quiet_since = session.received, time.monotonic()
            elif session.emptied and time.monotonic() - quiet_since > 0.5:
                ended = True
                break
        stop.set()
        session.join()
        if ended:
            session.disconnect(end_session=True)
            log.warning("ingress %s adopted the session of %s: answered its %d frames and ended it",
                        self.client_id, session.client_id, received)  # fmt: skip
        else:
            log.warning("ingress %s left the session of %s after answering %d of its frames", self.client_id,
                        session.client_id, received)  # fmt: skip
        self.counts.add("frames_adopted", received)
        with self._adopted_lock:
            self._adopted.pop(session.client_id, None)

    def _report_loop(self) -> None:
        assert self.spec.telemetry_period_s is not None
        while not self._stop.wait(self.spec.telemetry_period_s):
            self._publish_telemetry()

    def _publish_telemetry(self) -> None:
        """Each line's window, QoS 1: telemetry is the verdict usage a slice is billed for, so the broker
        keeps it for the control plane's persistent session while the control plane is away (it is
        stored once per window, so a redelivery bills nothing twice). Publishing never blocks frames."""
        assert self.telemetry is not None
        try:
            for line, window in self.telemetry.drain().items():
                topic = wire.telemetry_topic(self.spec.tenant, line, self.spec.name)
                self._publisher.publish(topic, window.model_dump_json().encode(), qos=1)
            if (candidate := self.candidate) is not None:
                self._publish_rollout(candidate)
        except Exception:  # a report lost is a gap in a chart; the frames go on
            log.exception("publishing telemetry failed")

    def _publish_rollout(self, candidate: Candidate) -> None:
        """The rollout's figures, beside the first line's telemetry (QoS 1, like it)."""
        if (report := candidate.window.drain()) is not None:
            topic = wire.telemetry_topic(self.spec.tenant, self.spec.lines[0], self.spec.name)
            self._publisher.publish(topic, report.model_dump_json().encode(), qos=1)

    # --- frames in (network thread) --------------------------------------------

    def _deliver(self, frame: Frame) -> None:
        """Queue ``frame`` for a batch, unless a frame with its id is being judged: then it joins that one.

        A frame whose answer went out moments ago (``RECENT_ANSWER_S``), or that the broker delivers again (MQTT
        DUP: it had sent it before, e.g. restored after a crash) after its answer went out, is acknowledged without
        a second answer: the robot has that answer or is about to, and if it was lost after all, the robot's next
        resend (a new publish, later) is answered from memory. After a broker restart both the restored frames and
        the robots' resends arrive together, and each would otherwise be answered (chaos scenario 1)."""
        if self._memory.answered_within(frame, RECENT_ANSWER_S) or (
            frame.redelivered and self._memory.answer(frame) is not None
        ):
            if (session := self._session_of(frame)) is not None:
                session.ack(frame)
            self.counts.add("retries_already_answered")
            return
        if self._memory.begin(frame):
            self._queue.put(frame)
        else:
            self.counts.add("retries_joined_in_progress")

    # --- answers out (batch workers) -------------------------------------------

    def _handle_batch(self, batch: list[Frame]) -> None:
        """Publish the batch's answers; a canary's robots are answered by the candidate, on its own pool."""
        if (candidate := self.candidate) is not None:
            batch, theirs = candidate.split(batch)
            if theirs:
                candidate.answer(theirs, self._by_candidate)
        if batch:
            self._publish(batch, None)

    def _by_candidate(self, frames: list[Frame]) -> None:
        """Frames routed to the candidate, routed again now: the rollout may have stepped or ended since."""
        candidate = self.candidate
        ours, theirs = candidate.split(frames) if candidate is not None else (frames, [])
        if ours:
            self._publish(ours, None)
        if theirs:
            self._publish(theirs, candidate)

    def _publish(self, batch: list[Frame], answering: Candidate | None) -> None:
        """Publish the batch's answers; acknowledge each frame (and the retries that joined it) once confirmed."""
        try:
            published = [
                (frame, self._publisher.publish(topic, payload, qos=1, properties=replies.reply_properties(frame)))
                for frame, topic, payload in self._answers(batch, answering)
            ]
            for frame, info in published:
                self._settle(frame, info)
        except Exception:
            log.exception("batch of %d frames failed; they stay unacknowledged and come back", len(batch))
            for frame in batch:
                self._memory.release(frame)

    def _settle(self, frame: Frame, info: MQTTMessageInfo) -> None:
        if not confirmed(info, ANSWER_CONFIRM_S):
            log.warning("result for frame %s not confirmed (%s); broker will redeliver it", frame.frame_id, info.rc)
            self._memory.release(frame)
            return
        followers = self._memory.release(frame)
        if confirmed(info, 0):
            for answered in (frame, *followers):
                if (session := self._session_of(answered)) is not None:
                    session.ack(answered)
            if frame.retained:
                self._clear_retained(frame)

    def _session_of(self, frame: Frame) -> FrameSession | None:
        """The session ``frame`` came on: this replica's own, or one it adopted; None for a session it let go
        (its message id means nothing elsewhere: the frame stays with that session, and is answered again)."""
        if not frame.origin or frame.origin == self.client_id:
            return self._session
        with self._adopted_lock:
            adopted = self._adopted.get(frame.origin)
        return adopted[0] if adopted is not None else None

    def _clear_retained(self, frame: Frame) -> None:
        """A robot published a frame retained: the broker would keep it and hand it to every new plain subscriber
        of the topic. Answered now, it is cleared (an empty retained message), once per such frame."""
        topic = frame.robot.sibling(wire.TopicKind.FRAMES)
        self._publisher.publish(topic, b"", qos=1, retain=True)
        self.counts.add("retained_frames_cleared")
        log.warning("robot %s published a retained frame (%s); answered it and cleared the broker's copy: robots "
                    "must publish frames with retain off", frame.robot.robot, frame.frame_id)  # fmt: skip

    def _answers(self, batch: list[Frame], answering: Candidate | None = None) -> list[Reply]:
        """Topic and payload of the answer to every frame in ``batch``: from memory, a refusal, or the model
        (``answering``: a rollout's candidate)."""
        answers: list[Reply] = []
        to_judge: list[Frame] = []
        for frame in batch:
            remembered = self._memory.answer(frame)
            if remembered:
                self.counts.add("retries_answered_from_memory")
                answers.append((frame, *remembered))
            elif problem := replies.refusal(frame, self.spec.policy(frame.robot.line), self._rates.allow):
                answers.append(self._error(frame, *problem))
            else:
                to_judge.append(frame)
        if to_judge:
            answers += self._judged(to_judge, answering)
        return answers

    def _judged(self, frames: list[Frame], answering: Candidate | None) -> list[Reply]:
        """The answers of the current model, or of ``answering``; during a rollout, counted for its report."""
        infer, replier = (answering.infer, answering.replier) if answering else (self._infer, self._replier)
        started = time.monotonic()
        outcomes = judge(infer, [f.payload for f in frames], on_failure=lambda: self.counts.add("model_call_failures"))
        now = time.monotonic()
        inference_ms = (now - started) * 1000
        if (rollout := answering or self.candidate) is not None:
            totals_ms = [(now - f.received) * 1000 for f in frames]
            rollout.count("candidate" if answering else "current", outcomes, totals_ms)
            if rollout.shadow:
                judged = [(f, o) for f, o in zip(frames, outcomes, strict=True) if not is_model_error(o)]
                rollout.shadow_judge([f for f, _ in judged], [o for _, o in judged])
        answers = []
        for frame, outcome in zip(frames, outcomes, strict=True):
            if error := replies.outcome_error(outcome):
                answers.append(self._error(frame, *error))
            else:
                answers.append(self._result(frame, outcome, started, inference_ms, replier))
        return answers

    def _result(
        self, frame: Frame, outcome: dict[str, Any], started: float, inference_ms: float, replier: replies.Replier
    ) -> Reply:
        result = replier.result(frame, outcome, started=started, inference_ms=inference_ms, now=time.monotonic())
        total_ms = result.timings_ms.total
        self.counts.add(f"verdict_{result.verdict}")
        if self.telemetry is not None:
            # on fail, a verdict's score is the reported defect's: its probability, or an anomaly's 0..1 figure
            location = wire.defect_location(outcome.get("location"), outcome.get("boxes"), outcome["defect_class"])
            self.telemetry.observe_verdict(
                frame.robot, frame_id=frame.frame_id, verdict=result.verdict, defect_class=result.defect_class,
                score=outcome["score"], total_ms=total_ms, payload=frame.payload, location=location,
            )  # fmt: skip
        if self._observe:
            self._observe(f"verdict_{result.verdict}", total_ms)
        return self._reply(frame, result)

    def _error(self, frame: Frame, code: wire.ErrorCode, detail: str) -> Reply:
        self.counts.add(f"error_{code.value}")
        if self.telemetry is not None:
            self.telemetry.observe_error(frame.robot, code)
        if self._observe:
            self._observe(f"error_{code.value}", (time.monotonic() - frame.received) * 1000)
        return self._reply(frame, self._replier.error(frame, code, detail), final=replies.is_final(code))

    def _reply(self, frame: Frame, answer: wire.Result | wire.ErrorReply, *, final: bool = True) -> Reply:
        """The reply to ``frame``; a final one is remembered so that a retry of the frame gets it again
        (an error that is not final, such as ``internal``, leaves the retry to be judged afresh)."""
        topic, payload = replies.answer_topic(frame, answer), answer.model_dump_json().encode()
        if final:
            self._memory.remember(frame, topic, payload)
        return frame, topic, payload
