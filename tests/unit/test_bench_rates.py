"""scripts.bench_cluster.rate_outside_checkpoints: the source's rate with the checkpoint
phases left out.

    time (s)      0    1    2    3    4    5    6
    source out    0  100  200  210  220  320  400 (of 400: read all)
    checkpoint    -    -    -    x    x    -    -

Polls 1→2 and 5→6 have no checkpoint at either end: 100 + 80 events in 2 s; polls 2→3,
3→4 and 4→5 touch the checkpoint (3 s of the 5 s between the source's first record and
its last); 0→1 starts before the first record, 6→7 after the last.
"""

from scripts.bench_cluster import rate_outside_checkpoints


def test_rate_leaves_out_polls_that_touch_a_checkpoint() -> None:
    samples = [(0.0, 0, False), (1.0, 100, False), (2.0, 200, False), (3.0, 210, True),
               (4.0, 220, True), (5.0, 320, False), (6.0, 400, False), (7.0, 400, False)]
    assert rate_outside_checkpoints(samples, 400) == {
        "events_per_s_outside_checkpoints": 90, "checkpointing_share": 0.6}


def test_no_quiet_poll_gives_no_rate() -> None:
    samples = [(0.0, 10, True), (1.0, 20, True), (2.0, 30, True)]
    assert rate_outside_checkpoints(samples, 100) == {
        "events_per_s_outside_checkpoints": None, "checkpointing_share": 1.0}
