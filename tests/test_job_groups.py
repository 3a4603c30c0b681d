"""How a job cuts its tracks into tasks for several workers: groups that finish together."""

from __future__ import annotations

import pytest
from songmill.flows.jobs import GROUPS_PER_WORKER, parallel_groups


@pytest.mark.parametrize(
    ("n_tracks", "seconds", "workers", "batch_size"),
    [
        (160, 30.0, 2, 16),
        (300, 30.0, 2, 16),
        (7, 30.0, 2, 16),
        (5000, 210.0, 3, 16),
        (1000, 5.0, 2, 64),
    ],
)
def test_parallel_groups_are_equal_whole_multiples_of_the_workers(
    n_tracks, seconds, workers, batch_size
):
    rows = list(range(n_tracks))
    groups = parallel_groups(rows, [seconds] * n_tracks, workers, batch_size)
    assert [r for g in groups for b in g for r in b] == rows  # every track once, in order
    assert all(0 < len(b) <= batch_size for g in groups for b in g)
    sizes = [sum(len(b) for b in g) for g in groups]
    if n_tracks >= workers * GROUPS_PER_WORKER:
        assert len(groups) % workers == 0 and len(groups) >= workers * GROUPS_PER_WORKER
        assert max(sizes) - min(sizes) <= max(
            1, max(len(g) for g in groups)
        )  # one track a batch at most
    else:
        assert sizes == [1] * n_tracks


def test_parallel_groups_balance_audio_not_track_counts():
    # Long and short tracks: groups of equal audio, so more short tracks in a group.
    weights = [30.0] * 40 + [240.0] * 40
    groups = parallel_groups(list(range(80)), weights, 2, 16)
    audio = [sum(weights[r] for b in g for r in b) for g in groups]
    assert max(audio) <= 1.5 * (sum(weights) / len(groups))
    assert sum(len(b) for b in groups[0]) > sum(len(b) for b in groups[-1])
