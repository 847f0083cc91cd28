"""One ingress replica in a process of its own, as a Serve replica runs it (chaos scenario 7 kills it with -9).

    python -m tests.integration.ingress_process PORT CLIENT_ID

It serves slice ``c7`` of tenant ``acme``'s ``line-1`` with the bundled model, prints ``ready`` once subscribed,
then its counters as one JSON line a second, and stops cleanly on SIGTERM. Its log goes to stderr."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from contracts.slice_spec import BrokerSpec, SliceSpec
from edge_node.ingress import FrameIngress
from edge_node.runtime import InspectionModel, as_reply
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST


def main(port: int, client_id: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = SliceSpec(name="c7", tenant="acme", lines=["line-1"], broker=BrokerSpec(port=port))
    model = InspectionModel(BUNDLED_MANIFEST, EdgeSettings(intra_op_threads=1))
    ingress = FrameIngress(spec, lambda frames: [as_reply(o) for o in model.inspect(frames)], client_id=client_id,
                           node="chaos-node", model="part-inspector:bundled")  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ingress.start()
    if not ingress.subscribed.wait(15):
        sys.exit("the broker did not confirm the subscriptions")
    print("ready", flush=True)
    while not stop.wait(1.0):
        print(json.dumps(ingress.counts.snapshot()), flush=True)
    ingress.stop()
    print(json.dumps(ingress.counts.snapshot()), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
