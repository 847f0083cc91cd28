"""A slice's ONNX Runtime threads per replica, chosen from the node's cores and a measurement (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.slice_spec import ReplicaSpec, ResourceSpec, SliceSpec
from edge_node import sizing
from edge_node.profiling import ProfileResult
from models import BUNDLED_MANIFEST


def spec(**changes: object) -> SliceSpec:
    return SliceSpec.model_validate({"name": "s", "tenant": "acme", "lines": ["line-1"], **changes})


class Measured:
    """A profiler with given frames/s per thread count, recording what it was asked."""

    def __init__(self, fps: dict[int, float], decode_ms: float = 0.0) -> None:
        self.fps = fps
        self.decode_ms = decode_ms
        self.asked: list[int] = []

    def __call__(self, _manifest: Path, *, threads: int, batch: int) -> ProfileResult:
        self.asked.append(threads)
        return ProfileResult(frames_per_s_per_replica=self.fps[threads], cold_start_s=0.1, decode_ms=self.decode_ms)


@pytest.mark.parametrize(("share", "expected"), [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6])])
def test_the_candidates_are_powers_of_two_and_the_share(share: int, expected: list[int]) -> None:
    assert sizing.candidates(share) == expected


def test_more_threads_win_only_when_they_add_more_than_a_tenth() -> None:
    assert sizing.choose({1: 180.0, 2: 300.0}) == 2  # the heavy model: the second core pays
    assert sizing.choose({1: 180.0, 2: 195.0}) == 1  # a light one: a thread that adds 8 % is a core lost
    assert sizing.choose({1: 100.0, 2: 170.0, 4: 180.0}) == 2


def test_one_replica_on_a_two_core_node_gets_the_second_core_when_it_measures_faster() -> None:
    measured = Measured({1: 180.0, 2: 320.0})
    chosen = sizing.size(spec(replicas=ReplicaSpec(min_replicas=1, max_replicas=1)), BUNDLED_MANIFEST, 2,
                         profiler=measured)  # fmt: skip
    assert (chosen.ort_threads, measured.asked) == (2, [1, 2] * sizing.ROUNDS)
    assert "2 ONNX Runtime thread(s) per replica" in chosen.describe() and "320 frames/s" in chosen.describe()
    assert sizing.sized(spec(), chosen.ort_threads).resources.ort_threads == 2


def test_a_slice_that_may_fill_the_node_with_replicas_gets_one_core_each_without_measuring_more() -> None:
    measured = Measured({1: 180.0})
    two = spec(replicas=ReplicaSpec(min_replicas=1, max_replicas=2))
    assert sizing.size(two, BUNDLED_MANIFEST, 2, profiler=measured).ort_threads == 1 and set(measured.asked) == {1}
    # Placed over nodes: its share of a node is for the most replicas the placement puts on one.
    placed = spec(replicas=ReplicaSpec(min_replicas=1, max_replicas=3),
                  placement={"lineside_node_1": 1, "lineside_node_2": 2})  # fmt: skip
    assert sizing.replicas_per_node(placed) == 2


def test_the_slices_own_thread_count_wins_and_nothing_is_measured() -> None:
    measured = Measured({})
    chosen = sizing.size(spec(resources=ResourceSpec(ort_threads=3)), BUNDLED_MANIFEST, 2, profiler=measured)
    assert (chosen.ort_threads, chosen.explicit, measured.asked) == (3, True, [])
    assert "as the slice says" in chosen.describe()


def test_the_bundled_model_is_measured_with_onnx_runtime_at_each_count() -> None:
    """The real profiler (ONNX Runtime on generated JPEG frames): a choice among what was measured."""
    chosen = sizing.size(spec(replicas=ReplicaSpec(min_replicas=1, max_replicas=1)), BUNDLED_MANIFEST, 2)
    assert sorted(chosen.measured_fps) == [1, 2] and all(fps > 0 for fps in chosen.measured_fps.values())
    assert chosen.ort_threads == sizing.choose(chosen.measured_fps)


def test_a_heavy_model_whose_second_thread_mostly_waits_gets_two_replicas_of_one_thread() -> None:
    """The layout of the node's cores for a slice run on its own (``lineside slice run``, the pipeline bench)."""
    assert sizing.layout({1: 70.0, 2: 101.0}, 2) == (2, 1)  # the reference model on 2 cores: 140 against 101
    assert sizing.layout({1: 180.0, 2: 350.0}, 2) == (1, 2)  # threads that scale: one replica, one model in memory
    assert sizing.layout({1: 100.0, 2: 190.0, 4: 300.0}, 4) == (2, 2)  # 380 is within a tenth of 400 (4 x 1)


def test_a_slice_run_on_its_own_measures_up_to_all_cores_and_gets_its_replicas() -> None:
    measured = Measured({1: 70.0, 2: 101.0})
    chosen = sizing.size(spec(), BUNDLED_MANIFEST, 2, profiler=measured, choose_replicas=True)
    assert (chosen.replicas, chosen.ort_threads, sorted(set(measured.asked))) == (2, 1, [1, 2])
    assert "2 model replica(s) of 1 ONNX Runtime thread(s) on 2 cores" in chosen.describe()
    placed = sizing.sized(spec(), chosen.ort_threads, chosen.replicas, cores=2)
    assert (placed.replicas.min_replicas, placed.replicas.max_replicas, placed.resources.ort_threads) == (2, 2, 1)
    # Ray places by reservations: both model replicas and the ingress (0.25 CPU) must fit on the 2 cores.
    assert 2 * placed.resources.cpus_per_replica + placed.resources.ingress_cpus <= 2


def test_a_slice_run_that_names_its_threads_fills_the_cores_with_replicas_of_that_many() -> None:
    measured = Measured({})
    chosen = sizing.size(spec(resources=ResourceSpec(ort_threads=2)), BUNDLED_MANIFEST, 4, profiler=measured,
                         choose_replicas=True)  # fmt: skip
    assert (chosen.replicas, chosen.ort_threads, measured.asked) == (2, 2, [])


def test_a_large_server_gets_at_most_the_sized_replica_cap() -> None:
    """64 cores would otherwise mean 64 copies of the model in memory; past the cap, threads take the cores."""
    measured = {1: 100.0, 2: 150.0, 4: 200.0, 8: 300.0, 16: 350.0, 32: 380.0, 64: 400.0}
    replicas, threads = sizing.layout(measured, 64)
    assert replicas <= sizing.MAX_SIZED_REPLICAS and replicas * threads <= 64
    assert (replicas, threads) == (8, 8)  # 8 x 300 beats 8 x 100 (1 thread) and 4 x 350 (16 threads)


def run(fps: float, decode_ms: float) -> ProfileResult:
    return ProfileResult(frames_per_s_per_replica=fps, cold_start_s=0.1, decode_ms=decode_ms)


def test_decoding_stays_in_model_replicas_that_fill_the_node() -> None:
    """Two replicas of one thread on two cores: no core is left to decode elsewhere, whatever decoding costs."""
    assert sizing.place_decoding(run(500.0, 1.5), replicas=2, threads=1, cores=2) == ("model", 1000.0)


def test_decoding_moves_to_the_ingress_when_idle_cores_can_take_it_and_it_pays() -> None:
    # One replica on one of two cores: 2 ms a frame of which 1 ms decoding. Without it the replica judges
    # 1,000 frames/s, and the idle core decodes 1,000: twice the 500 it did.
    assert sizing.place_decoding(run(500.0, 1.0), replicas=1, threads=1, cores=2) == ("ingress", 1000.0)
    # Decoding a tenth of the frame's time: at most 11 % more, within what moving it costs: it stays.
    assert sizing.place_decoding(run(500.0, 0.2), replicas=1, threads=1, cores=2)[0] == "model"
    # A GPU replica's threads take no core: its decoding goes to the ingress on the node's cores.
    assert sizing.place_decoding(run(800.0, 1.0), replicas=1, threads=4, cores=4, on_gpu=True)[0] == "ingress"
    assert sizing.place_decoding(run(800.0, 1.0), replicas=1, threads=4, cores=4)[0] == "model"


def test_the_sizing_writes_where_to_decode_and_the_slices_own_choice_wins() -> None:
    one = spec(replicas=ReplicaSpec(min_replicas=1, max_replicas=1))
    chosen = sizing.size(one, BUNDLED_MANIFEST, 2, profiler=Measured({1: 500.0, 2: 520.0}, decode_ms=1.0))
    assert (chosen.ort_threads, chosen.decode_at, chosen.ingress_replicas) == (1, "ingress", None)
    assert "frames decoded in the ingress, decoding measured 1.00 ms a frame" in chosen.describe()
    assert sizing.apply(one, chosen, 2).resources.decode_at == "ingress"
    own = spec(replicas=ReplicaSpec(min_replicas=1, max_replicas=1), resources=ResourceSpec(decode_at="model"))
    assert sizing.size(own, BUNDLED_MANIFEST, 2, profiler=Measured({1: 500.0, 2: 520.0}, 1.0)).decode_at == "model"
    explicit = spec(resources=ResourceSpec(ort_threads=1))
    assert sizing.size(explicit, BUNDLED_MANIFEST, 2).decode_at == "model"  # nothing measured: the model decodes


def test_a_slice_run_on_its_own_that_decodes_in_its_ingress_gets_the_ingress_replicas_decoding_needs() -> None:
    """A GPU replica on an 8-core node judging 2,000 frames/s without decoding, decoding 2 ms a frame: the
    ingress replicas need 4 cores for it (the sizing's cap); their reservation shrinks to fit."""
    gpu = spec(resources=ResourceSpec(gpus_per_replica=1.0, ort_threads=0))
    measured = Measured(dict.fromkeys((1, 2, 4, 8), 400.0), decode_ms=2.0)
    chosen = sizing.size(gpu, BUNDLED_MANIFEST, 8, profiler=measured, choose_replicas=True)
    assert (chosen.replicas, chosen.ort_threads) == (1, 1)  # one GPU replica, not one per core
    assert chosen.decode_at == "ingress" and chosen.ingress_replicas == sizing.MAX_SIZED_INGRESS
    sized = sizing.apply(gpu, chosen, 8)
    assert sized.ingress_replicas == 4 and sized.resources.ingress_cpus == 0.25


@pytest.mark.parametrize("cores", range(1, 17))
def test_sized_replicas_and_ingress_always_fit_the_cores_ray_counts(cores: int) -> None:
    """Review finding: rounding each replica's reservation to 3 decimals upwards asked for more than the node
    has (4 cores, 4 replicas: 4 x 0.938 + 0.25 = 4.002), and Ray left the last replica pending."""
    for replicas in range(1, cores + 1):
        for ingress in (None, *(n for n in (1, 2, 4) if n <= cores)):  # the sizing gives at most the idle cores
            sized = sizing.sized(spec(), 1, replicas, cores, ingress_replicas=ingress)
            asked = sized.resources.cpus_per_replica * replicas + sized.resources.ingress_cpus * sized.ingress_replicas
            assert asked <= cores + 1e-9, (cores, replicas, ingress, asked)
