"""The tree sampler against processes whose CPU, memory and switches are known.

A burner tree spends a known amount of CPU (measured by each process on its
own clock): the parent itself, a child that burns and exits mid-window (reaped
with waitpid), and a child that burns and is still alive at the end.  The
sampler must charge all three, exactly once each.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from bench.sample import taskstats
from bench.sample.cgroup import CpuCgroup
from bench.sample.sampler import MAX_SHARE, WINDOW_TICK_MAX, TreeSampler
from tests.support import ROOT, kill_group, piped, process_tree, wait_for

BURN_S = 0.3  # per burner; the tree burns 3 of them
TICK = 0.011  # psutil reads 10 ms clock ticks: allow one per process

BURNER = textwrap.dedent(f"""
    import os, sys, time
    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
    sys.stdin.readline()                     # go
    exited = os.fork()
    if exited == 0:
        burn({BURN_S}); os._exit(0)
    done_r, done_w = os.pipe()
    alive = os.fork()
    if alive == 0:
        burn({BURN_S}); os.write(done_w, b"x")
        for _ in range(100):                  # 100 voluntary switches, then wait
            time.sleep(0.001)
        os.write(done_w, b"y"); time.sleep(60); os._exit(0)
    burn({BURN_S})
    os.waitpid(exited, 0)
    os.read(done_r, 1); os.read(done_r, 1)
    block = bytearray(64 << 20)
    for i in range(0, len(block), 4096):     # touch every page so it is resident
        block[i] = 1
    print("done", flush=True)
    sys.stdin.readline()
""")


@pytest.fixture
def burner():
    with piped([sys.executable, "-c", BURNER], text=True) as proc:
        yield proc


def _measure(proc: subprocess.Popen, cgroup: CpuCgroup | None) -> dict:
    if cgroup is not None:
        assert cgroup.add(proc.pid)
    sampler = TreeSampler(proc.pid, interval=0.05, cgroup=cgroup)
    sampler.start()
    try:
        sampler.mark("start")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        sampler.mark("end")
    finally:
        sampler.stop()
    return sampler.stats()


def _check(stats: dict, tolerance: float) -> None:
    expected = 3 * BURN_S
    assert expected - tolerance <= stats["cpu_s"] <= expected + 0.25, stats
    assert stats["cpu_s"] == pytest.approx(stats["cpu_user_s"] + stats["cpu_system_s"])
    assert stats["procs_peak"] >= 2
    assert stats["ctx_voluntary"] >= 100
    assert stats["pss_peak_bytes"] >= 64 << 20
    assert stats["rss_peak_bytes"] >= stats["pss_peak_bytes"] >= stats["uss_peak_bytes"] > 0
    assert stats["wall_s"] > 0 and stats["samples"] >= 2


def test_psutil_tree_counts_live_and_reaped_children_once(burner):
    stats = _measure(burner, cgroup=None)
    assert stats["cpu_source"] == "psutil"
    _check(stats, tolerance=3 * TICK)


def test_cgroup_counts_the_same_tree():
    group = CpuCgroup.create("test-sampler")
    if group is None:
        pytest.skip("no writable CPU-accounting cgroup on this machine")
    try:
        with piped([sys.executable, "-c", BURNER], text=True) as proc:
            stats = _measure(proc, group)
            assert stats["cpu_source"] == "cgroup"
            _check(stats, tolerance=0.01)
            assert set(group.procs()) == {proc.pid, *process_tree(proc.pid)}
    finally:
        group.remove()
    assert not group.path.exists()


def test_sampler_survives_the_tree_vanishing(burner):
    sampler = TreeSampler(burner.pid, interval=0.01)
    sampler.mark("start")
    kill_group(burner)
    sampler.tick()
    sampler.mark("end")
    stats = sampler.stats()
    assert stats["samples"] >= 1  # the sample taken while it was alive
    assert sampler.cpu() == (0.0, 0.0, 0.0)


def test_memory_comes_from_the_ticks_since_the_load_began(burner):
    """The window's marks read no memory (at its close the generator is already
    closing its connections); a tick asked for with wake() when the load began
    supplies it, on the sampler's thread."""
    sampler = TreeSampler(burner.pid, interval=60)  # no tick of its own in this test
    sampler.start()
    try:
        load_began = time.monotonic()
        sampler.wake()
        assert wait_for(lambda: len(sampler.samples) == 1)
        woken = sampler.samples[0]
        sampler.mark("start", memory=False)
        time.sleep(0.05)
        sampler.mark("end", memory=False)
    finally:
        started = time.monotonic()
        sampler.stop()
    assert time.monotonic() - started < 1  # stop() does not wait out the interval
    assert sampler.samples == [woken] and woken.t >= load_began and woken.procs == 1
    since_load = sampler.stats(memory_from=load_began)
    assert since_load["samples"] == 1 and since_load["pss_peak_bytes"] == woken.pss
    since_start = sampler.stats()  # none inside: no memory figures, not older ones
    assert since_start["samples"] == 0 and since_start["pss_peak_bytes"] is None


HOLDER = textwrap.dedent("""
    import os, sys, time
    block = bytearray(32 << 20)
    for i in range(0, len(block), 4096):     # touch every page so it is resident
        block[i] = 1
    print("ready", flush=True)
    sys.stdin.readline()
    if os.fork() == 0:                        # a child that never writes the block
        time.sleep(60); os._exit(0)
    print("forked", flush=True)
    sys.stdin.readline()
""")


def test_anonymous_pss_ignores_outside_sharers_and_splits_fork_sharing():
    """Memory per connection is read from anonymous PSS: neither other Python
    processes mapping libpython nor a child sharing pages copy-on-write may move it."""
    with contextlib.ExitStack() as running:
        holder = running.enter_context(piped([sys.executable, "-c", HOLDER], text=True))
        assert holder.stdout.readline().strip() == "ready"
        sampler = TreeSampler(holder.pid)
        alone = sampler.sample()
        for _ in range(3):
            running.enter_context(piped([sys.executable, "-c", "import sys; sys.stdin.read()"]))
        time.sleep(0.5)  # let them map and touch libpython
        crowded = sampler.sample()
        holder.stdin.write("fork\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "forked"
        forked = sampler.sample()
    assert alone.pss_anon >= 32 << 20
    assert alone.uss >= alone.pss_anon  # the block is private to the only process
    assert abs(crowded.pss_anon - alone.pss_anon) <= 64 << 10, (alone, crowded)
    # RSS counts the shared block once per process; anonymous PSS splits it.
    assert forked.procs == 2
    assert forked.rss >= alone.rss + (32 << 20)
    assert forked.pss_anon - alone.pss_anon < 4 << 20, (alone, forked)


THREADS = textwrap.dedent("""
    import sys, threading
    done = threading.Event()
    for _ in range(400):
        threading.Thread(target=done.wait, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.readline()
""")


def test_ticks_take_at_most_their_share_of_a_cpu():
    """The sampler shares the load generator's CPUs: a big tree must not turn
    its ticks into a CPU hog.  Without taskstats, 400 threads make each tick
    read 400 files."""
    with piped([sys.executable, "-c", THREADS], text=True) as proc:
        assert proc.stdout.readline().strip() == "ready"
        sampler = TreeSampler(proc.pid, interval=0.01, kernel=None)
        sampler.tick()
        one_tick = sampler.cost
        assert one_tick > 0.01  # else this tree is too small to show anything
        started = time.monotonic()
        sampler.start()
        time.sleep(1.5)
        sampler.stop()
        elapsed = time.monotonic() - started
    ticks = len(sampler.samples) - 1
    assert ticks >= 2  # spaced out, not stopped
    # Each tick is followed by a wait long enough to keep the share; the last
    # tick's wait may be cut short by stop().
    assert sampler.cost - one_tick <= MAX_SHARE * elapsed + one_tick * 1.5, (ticks, one_tick)


SWITCHERS = textwrap.dedent("""
    import sys, threading, time
    def switch():                            # 20 voluntary switches, at least
        for _ in range(20):
            time.sleep(0.001)
    def run(threads, wait):
        for t in [threading.Thread(target=target) for target in [switch] * threads]:
            t.start()
            if wait:
                t.join()
    run(50, wait=True)                       # gone before anyone looks
    done = threading.Event()
    threading.Thread(target=lambda: (switch(), done.wait()), daemon=True).start()
    time.sleep(0.2)
    print("ready", flush=True)
    sys.stdin.readline()
""")


def all_asleep(pid: int) -> bool:
    """Every thread of pid blocked (state S): none will switch until woken."""
    stats = [(task / "stat").read_text() for task in Path(f"/proc/{pid}/task").iterdir()]
    return all(stat.rsplit(")", 1)[1].split()[0] == "S" for stat in stats)


def test_taskstats_counts_the_threads_proc_shows_and_those_gone():
    if taskstats.shared() is None:
        pytest.skip("no taskstats in this kernel")
    with piped([sys.executable, "-c", SWITCHERS], text=True) as proc:
        assert proc.stdout.readline().strip() == "ready"
        # "ready" goes out before the main thread blocks on stdin, and that
        # block is one more switch: read once every thread is asleep.
        assert wait_for(lambda: all_asleep(proc.pid))
        from_proc = TreeSampler(proc.pid, kernel=None).ctx()
        from_kernel = TreeSampler(proc.pid).ctx()
        again = TreeSampler(proc.pid, kernel=None).ctx()
    assert from_proc == again  # nothing switched meanwhile: the reads are comparable
    # /proc lists the two live threads; the kernel adds the 50 that exited.
    assert 20 <= from_proc[0] < 50 * 20
    assert from_kernel[0] - from_proc[0] >= 50 * 20
    assert from_kernel[1] >= from_proc[1]
    assert taskstats.shared().ctx_switches(proc.pid) is None  # gone (and reaped)


def test_without_cap_net_admin_taskstats_gives_way_to_proc():
    """The kernel answers taskstats requests only with CAP_NET_ADMIN: a user
    without it must get /proc, not counts that silently stay at zero."""
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not os.access(python, os.X_OK):
        pytest.skip("needs root to drop to an unprivileged user, and /usr/bin/python3")

    def unprivileged() -> None:
        os.setgid(65534)
        os.setuid(65534)

    # A copy the unprivileged user can read, wherever the checkout lives.
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        os.chmod(where, 0o755)
        module = Path(where) / "taskstats_copy.py"
        module.write_bytes((ROOT / "bench" / "sample" / "taskstats.py").read_bytes())
        module.chmod(0o644)
        probe = "import taskstats_copy as t; print(t.shared() is None, t.Taskstats.open() is None)"
        result = subprocess.run([python, "-c", probe], cwd=where, capture_output=True,
                                text=True, timeout=30, preexec_fn=unprivileged)
    assert (result.returncode, result.stdout) == (0, "True True\n"), result.stderr


FORKER = textwrap.dedent("""
    import os, sys, time
    for _ in range(150):
        if os.fork() == 0:
            time.sleep(60); os._exit(0)
    print("ready", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("children", [False, True])
def test_while_costly_ticks_are_held_only_cheap_ones_run(children):
    """In the window the sampler shares the generator's CPU: a tree whose
    tick is costly is not read there (the tick in progress is dropped at once),
    a cheap one still is."""
    source = FORKER if children else THREADS.replace("range(400)", "range(1)")
    with piped([sys.executable, "-c", source], text=True) as proc:
        assert proc.stdout.readline().strip() == "ready"
        sampler = TreeSampler(proc.pid, interval=0.01)
        sampler.start()
        try:
            assert wait_for(lambda: len(sampler.samples) >= 2)
            assert (sampler.tick_cost > WINDOW_TICK_MAX) is children
            sampler.hold_costly_ticks(True)
            before, spent = len(sampler.samples), sampler.cost
            time.sleep(0.6)
            held, held_cost = len(sampler.samples) - before, sampler.cost - spent
            sampler.hold_costly_ticks(False)
            assert wait_for(lambda: len(sampler.samples) > before + held)
        finally:
            sampler.stop()
    if children:
        # At most the tick that was under way: dropped after a process or two.
        assert held == 0 and held_cost < WINDOW_TICK_MAX, (held, held_cost)
    else:
        assert held >= 5


def test_tasks_counts_every_thread_of_the_tree():
    """What the runner asks before overlapping the next trial: a count of the
    tree's threads that needs no memory reading."""
    group = CpuCgroup.create("test-tasks")
    try:
        with piped([sys.executable, "-c", THREADS], text=True) as proc:
            assert proc.stdout.readline().strip() == "ready"
            assert TreeSampler(proc.pid).tasks() == 401
            if group is not None:
                assert group.add(proc.pid)
                assert TreeSampler(proc.pid, cgroup=group).tasks() == 401
    finally:
        if group is not None:
            group.remove()
