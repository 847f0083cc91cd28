"""An answer published while the ingress's answer connection is down: paho queues it and sends it on reconnect,
but its ``wait_for_publish`` raises at once. The ingress must wait for the broker's PUBACK all the same, or the
frame stays unacknowledged on the frames connection for good (chaos scenario 1 lost 622 of 925 frames so)."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edge_node.ingress.frame_ingress import confirmed


def _queued_while_disconnected() -> mqtt.MQTTMessageInfo:
    info = mqtt.MQTTMessageInfo(7)
    info.rc = mqtt.MQTT_ERR_NO_CONN  # what publish() says while the connection is down
    return info


def test_paho_alone_gives_up_on_a_message_it_queued_while_disconnected() -> None:
    with pytest.raises(RuntimeError, match="not currently connected"):
        _queued_while_disconnected().wait_for_publish(timeout=1)


def test_an_answer_queued_while_disconnected_is_confirmed_once_the_broker_acknowledges_it() -> None:
    info = _queued_while_disconnected()
    threading.Timer(0.2, info._set_as_published).start()
    started = time.monotonic()
    assert confirmed(info, 5.0)
    assert time.monotonic() - started < 5.0


def test_an_answer_never_acknowledged_is_not_confirmed() -> None:
    assert not confirmed(_queued_while_disconnected(), 0.3)
    refused = mqtt.MQTTMessageInfo(8)
    refused.rc = mqtt.MQTT_ERR_QUEUE_SIZE
    assert not confirmed(refused, 0.3)
