"""Torch's thread count and the OpenMP waiting policy set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from napari_tomoseg.core import threads as threads_mod
from napari_tomoseg.core.threads import (
    OPENMP_WAITING,
    available_cpus,
    configure_threads,
    default_threads,
    set_openmp_waiting,
)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_waiting_is_set_when_the_user_chose_none() -> None:
    env: dict[str, str] = {"PATH": "/bin"}
    assert set_openmp_waiting(env) == OPENMP_WAITING
    assert env["GOMP_SPINCOUNT"] == OPENMP_WAITING["GOMP_SPINCOUNT"]


@pytest.mark.parametrize(
    "user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}, {"KMP_BLOCKTIME": "200"}]
)
def test_a_users_openmp_setting_is_kept(user: dict[str, str]) -> None:
    env = dict(user)
    assert set_openmp_waiting(env) == {}
    assert env == user


def _env_after_import(extra: dict[str, str]) -> dict[str, str | None]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = (
        "import json, os, napari_tomoseg; "
        "print(json.dumps({k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **extra},
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    return json.loads(out.stdout)


def test_importing_the_package_sets_the_waiting_but_keeps_the_users() -> None:
    assert _env_after_import({}) == {
        "GOMP_SPINCOUNT": OPENMP_WAITING["GOMP_SPINCOUNT"],
        "OMP_WAIT_POLICY": None,
    }
    assert _env_after_import({"OMP_WAIT_POLICY": "ACTIVE"}) == {
        "GOMP_SPINCOUNT": None,
        "OMP_WAIT_POLICY": "ACTIVE",
    }
    assert _env_after_import({"GOMP_SPINCOUNT": "123"})["GOMP_SPINCOUNT"] == "123"


def test_default_is_cut_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_mod, "idle_cpus", lambda: None)
    monkeypatch.setattr(threads_mod, "_torch_default", 8)
    monkeypatch.setattr(threads_mod, "available_cpus", lambda: 3)
    assert default_threads() == 3
    monkeypatch.setattr(threads_mod, "available_cpus", lambda: 16)
    assert default_threads() == 8  # never more than torch's own choice (its physical cores)


def test_default_leaves_the_cores_busy_programs_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_mod, "_torch_default", 2)
    monkeypatch.setattr(threads_mod, "available_cpus", lambda: 2)
    monkeypatch.setattr(threads_mod, "idle_cpus", lambda: 1.9)
    assert default_threads() == 2
    monkeypatch.setattr(threads_mod, "idle_cpus", lambda: 1.1)  # a neighbour on one core
    assert default_threads() == 1
    monkeypatch.setattr(threads_mod, "idle_cpus", lambda: 0.0)  # all taken: still one thread
    assert default_threads() == 1


def test_idle_cpus_reads_the_machine() -> None:
    idle = threads_mod.idle_cpus(0.05)
    assert idle is None or 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_default_keeps_a_users_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_mod, "_torch_default", 6)
    monkeypatch.setattr(threads_mod, "available_cpus", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert default_threads() == 6


def test_available_cpus_follows_a_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads_mod, "_cgroup_quota", lambda: 0.5)
    assert available_cpus() == 1
    monkeypatch.setattr(threads_mod, "_cgroup_quota", lambda: 1000.0)
    assert available_cpus() == affinity


def test_configure_sets_torchs_count(
    restore_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads_mod, "default_threads", lambda: 2)
    assert configure_threads(None) == 2
    assert torch.get_num_threads() == 2


def test_configure_in_a_worker_thread_sets_that_threads_count(restore_threads: None) -> None:
    seen: list[int] = []

    def job() -> None:
        configure_threads(1)
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert seen == [1]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_configure_refuses_a_bad_count(bad: object) -> None:
    with pytest.raises(ValueError, match="threads must be a whole number of at least 1"):
        configure_threads(bad)  # type: ignore[arg-type]
