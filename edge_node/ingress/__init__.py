"""MQTT side of a slice: consume frames, micro-batch them to the model, publish verdicts.

No Ray here: the model is reached through an ``infer`` callable (a Serve
handle in production, an in-process model in tests), so the ingress runs and
is tested against a real broker without a cluster.

Delivery guarantees:

* Frames arrive at QoS 1 on a persistent MQTT 5 session with manual
  acknowledgement; a frame is acknowledged only after its answer was published
  and the broker confirmed it (``mqtt_session``).
* Backpressure: at most ``max_inflight_frames`` unacknowledged frames per
  replica; beyond that the broker keeps them queued (``mqtt_session``).
* A retried frame id gets the same answer again without a second inference
  (``answer_memory``).
* Every frame gets an answer: a verdict or a coded error (``replies``), also
  when the model cannot be reached (``batching``).

``FrameIngress`` (``frame_ingress``) puts these together.
"""

from edge_node.ingress.batching import InferFn
from edge_node.ingress.frame_ingress import FrameIngress, ObserveFn
from edge_node.ingress.frames import Frame, frame_id_of

__all__ = ["Frame", "FrameIngress", "InferFn", "ObserveFn", "frame_id_of"]
