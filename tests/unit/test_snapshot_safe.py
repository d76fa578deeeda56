"""jobs/snapshot_safe.py without a JVM: it refuses PyFlink versions its operator was not
built for and leaves PyFlink untouched then. (The operator itself, and the error when
its jar is missing, are tested on a minicluster: tests/pipeline/test_timer_restore.py.)"""

from __future__ import annotations

import pytest
from pyflink import version
from pyflink.datastream import data_stream

from jobs import snapshot_safe


def test_other_pyflink_versions_are_refused_and_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unpatched(*args: object) -> None:  # as PyFlink's own, whatever ran before
        raise AssertionError("not called")

    monkeypatch.setattr(data_stream, "_get_one_input_stream_operator", unpatched)
    monkeypatch.setattr(version, "__version__", "2.3.0")
    with pytest.raises(snapshot_safe.SnapshotSafeError, match="PyFlink 2.3.0.*2.2.1 only"):
        snapshot_safe.install()
    assert data_stream._get_one_input_stream_operator is unpatched


def test_the_pinned_version_is_the_one_the_operator_is_built_for() -> None:
    assert version.__version__ == snapshot_safe.PYFLINK_VERSION
