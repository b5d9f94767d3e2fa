"""Several processes decide together, and fail together: fast and clearly.

Every decision that ends or changes a run is taken by all processes at the same
point, from the same facts, before any of them acts on it:

    exchange     one round: every process posts a value and reads everyone's
    together     a block of local work (checks, loading) whose errors are shared: if
                 any process fails, every process raises the first failure (by
                 process id), with the same message and exit code
    same         settings and data must be the same everywhere; a difference is an
                 error naming the setting and the processes
    any_stop     a stop request (Ctrl-C, SIGTERM) seen by any process stops all of
                 them, at the same step
    watchdog     a process that dies or stops answering ends every survivor within a
                 bound, with a message naming it and the command that resumes the run

The rounds go through the key-value store of JAX's coordination service (in process
0), not through device collectives: a collective whose peer is gone blocks, and ends
only when the coordination service aborts the process with a native stack dump. Each
wait for another process is bounded: by `timeout_s` (--process-timeout) of silence
from a peer's heartbeat, and by `STAGE_LIMIT_S` overall.

The watchdog is a thread that posts this process's heartbeat every second and reads
the others'. When a peer's heartbeat stops for timeout_s / 2 (it died, or froze), it
prints the reason and the resume command and ends this process at once (os._exit:
the main thread may be blocked inside a collective that will never complete), with
exit code EXIT_PROCESS_LOST. JAX's own heartbeat timeout is set well beyond it, so
the message comes first.

State here is per process, like jax.distributed's own: the round counter, the
timeout, the watchdog thread and the resume hint. With one process every function
is a no-op that returns this process's own value.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager

import jax

from ..errors import EXIT_PROCESS_LOST, ProcessLost, SvhnJaxError, error_types

PREFIX = "svhn_jax"
STAGE_LIMIT_S = 1800.0    # the longest one process may wait for another to reach a stage
HEARTBEAT_S = 1.0

_state = {"round": 0, "timeout_s": 60.0, "hint": "", "watchdog": None, "stop": threading.Event()}


def several() -> bool:
    return jax.process_count() > 1


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def configure(timeout_s: float) -> None:
    """The bound on silence from a peer, before anything is exchanged."""
    _state["timeout_s"] = float(timeout_s)


def set_hint(hint: str) -> None:
    """What a survivor says after naming the lost process: the resume command."""
    _state["hint"] = hint


# ------------------------------------------------------------------ rounds


def exchange(stage: str, value, limit_s: float = STAGE_LIMIT_S) -> list:
    """Every process's `value` (JSON), in process order, once all have posted theirs.
    Raises ProcessLost when a peer's heartbeat stops while we wait, or when it has not
    posted within limit_s."""
    if not several():
        return [value]
    _state["round"] += 1
    key = f"{PREFIX}/round/{_state['round']}/{stage}"
    client, me = _client(), jax.process_index()
    client.key_value_set(f"{key}/{me}", json.dumps(value))
    out, start = [], time.monotonic()
    for pid in range(jax.process_count()):
        while True:
            raw = _try_get(client, f"{key}/{pid}")
            if raw is not None:
                out.append(json.loads(raw))
                break
            waited = time.monotonic() - start
            if _silent_for(pid) > _state["timeout_s"] / 2 or waited > limit_s:
                raise ProcessLost(_lost_message(pid, f"it did not reach {stage!r} within "
                                                     f"{waited:.0f} s"))
            time.sleep(0.05)
    return out


def _get(client, key):
    """The value at key, None until it is posted; other errors propagate."""
    try:
        return client.key_value_try_get(key)
    except Exception as e:
        if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
            return None
        raise


def _try_get(client, key):
    try:
        return _get(client, key)
    except Exception:   # the store is process 0's: it is gone
        raise ProcessLost(_lost_message(0, "the coordination service stopped answering")) from None


@contextmanager
def together(stage: str):
    """Local work whose errors every process shares. Must contain no collective (a
    process that failed early would never join it)."""
    error = None
    try:
        yield
    except SvhnJaxError as e:
        if not several():
            raise
        error = e
    if not several():
        return
    mine = None if error is None else {"type": type(error).__name__, "message": str(error)}
    failures = [(pid, f) for pid, f in enumerate(exchange(stage, mine)) if f]
    if failures:
        pid, f = failures[0]
        cls = error_types().get(f["type"], SvhnJaxError)
        raise cls(f"process {pid}: {f['message']}")


def same(stage: str, facts: dict) -> None:
    """Every process must hold the same facts (settings, data fingerprints); a
    difference names the first key and the processes that differ."""
    everyone = exchange(stage, facts)
    for pid, theirs in enumerate(everyone[1:], start=1):
        for key in sorted(set(everyone[0]) | set(theirs)):
            if everyone[0].get(key) != theirs.get(key):
                raise SvhnJaxError(f"the processes disagree on {key}: process 0 has "
                                   f"{_show(everyone[0].get(key))}, process {pid} has "
                                   f"{_show(theirs.get(key))}; start every process with the same "
                                   f"settings and data")


def _show(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def vote(stage: str, numbers=(), stop: bool = False, why: str | None = None) -> tuple[bool, str | None]:
    """(stop, why): a stop request of any process stops all of them. `numbers` (host
    arrays) are what this process's next decisions follow from (losses, check errors,
    validation scores): replicated values, the same in every process; if their
    digests differ, the processes could not take the same decisions, so that is an
    error."""
    if not several():
        return bool(stop), why
    votes = exchange(stage, {"stop": bool(stop), "why": why, "digest": digest(*numbers)})
    for pid, v in enumerate(votes):
        if v["digest"] != votes[0]["digest"]:
            raise SvhnJaxError(f"process {pid} computed other numbers than process 0 at {stage} "
                               f"(different hardware or libraries?): the processes cannot agree "
                               f"on the run's course")
    asked = [(pid, v["why"]) for pid, v in enumerate(votes) if v["stop"]]
    if not asked:
        return False, None
    pid, why = asked[0]
    return True, f"{why or 'a stop request'} in process {pid}"


def digest(*arrays) -> str:
    """A short fingerprint of host arrays, for `vote`."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- watchdog


_seen: dict = {}


def _silent_for(pid: int) -> float:
    """Seconds since process pid's heartbeat last advanced (0 for this process)."""
    if pid == jax.process_index() or pid not in _seen:
        return 0.0
    return time.monotonic() - _seen[pid][1]


def start_watchdog() -> None:
    """Post a heartbeat every second and end this process when a peer falls silent."""
    if not several() or _state["watchdog"] is not None:
        return
    me, n = jax.process_index(), jax.process_count()
    now = time.monotonic()
    _seen.update({pid: (None, now) for pid in range(n) if pid != me})

    def beat():
        client, count = _client(), 0
        while not _state["stop"].is_set():
            count += 1
            try:
                client.key_value_set(f"{PREFIX}/alive/{me}", str(count), allow_overwrite=True)
                for pid in _seen:
                    raw = _get(client, f"{PREFIX}/alive/{pid}")
                    if raw is not None and raw != _seen[pid][0]:
                        _seen[pid] = (raw, time.monotonic())
            except Exception:
                if me != 0:
                    _end(0, "the coordination service in process 0 stopped answering")
            for pid in _seen:
                if _silent_for(pid) > _state["timeout_s"] / 2 and not _state["stop"].is_set():
                    _end(pid, f"its heartbeat stopped {_silent_for(pid):.0f} s ago")
            _state["stop"].wait(HEARTBEAT_S)

    thread = threading.Thread(target=beat, name="svhn_jax-watchdog", daemon=True)
    _state["watchdog"] = thread
    thread.start()


def finish() -> None:
    """At exit: wait (bounded) until every process is done, then stop the heartbeat, so
    that a process finishing early is not taken for a lost one."""
    if _state["watchdog"] is None:
        return
    try:   # bounded: a process that fails alone must not wait for the others for long
        exchange("finish", None, limit_s=_state["timeout_s"])
    except SvhnJaxError:
        pass
    _state["stop"].set()


def _lost_message(pid, why: str) -> str:
    hint = _state["hint"]
    who = f"process {pid} of {jax.process_count()}" if isinstance(pid, int) else pid
    return f"{who} is lost ({why}); every process of the run stops" + (f". {hint}" if hint else "")


def _end(pid: int, why: str) -> None:
    """A peer is lost while this process may be blocked in a collective: say so, end now."""
    print(f"error: {_lost_message(pid, why)}", file=sys.stderr, flush=True)
    os._exit(EXIT_PROCESS_LOST)


@contextmanager
def lost_peers_reported():
    """A collective that fails because its peer went away (Gloo: connection reset)
    becomes ProcessLost, with the resume command, instead of a raw runtime error."""
    try:
        yield
    except Exception as e:
        if several() and type(e).__name__ == "JaxRuntimeError":
            first = str(e).strip().splitlines()[0][:200]
            raise ProcessLost(_lost_message(_silent_peer(), f"a collective failed: {first}")) from None
        raise


def _silent_peer() -> int | str:
    """The one peer whose heartbeat has stopped advancing (the one a failed collective
    lost), waited for until the watchdog would end this process anyway; "another
    process" when that cannot be told. A heartbeat the peer posted just before it died
    may be read late (on a busy machine), so silence is measured, not a snapshot."""
    deadline = time.monotonic() + _state["timeout_s"] / 2 + 2 * HEARTBEAT_S
    while True:
        silent = [pid for pid in _seen if _silent_for(pid) >= 3 * HEARTBEAT_S]
        if len(silent) == 1 or time.monotonic() > deadline:
            return silent[0] if len(silent) == 1 else "another process"
        time.sleep(HEARTBEAT_S / 2)