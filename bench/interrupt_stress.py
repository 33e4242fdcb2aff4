"""Ctrl-C at random moments of a thread-pool loop like `prepare`'s, many times in one process.

    python bench/interrupt_stress.py plain 3000   # Ctrl-C raised wherever it lands (what prepare did before)
    python bench/interrupt_stress.py held 3000    # Ctrl-C held by brainmri.core.deferred_interrupt until check()

Each trial starts a 1-worker ThreadPoolExecutor over 400 small items and arms a timer (0–4 ms) that sends this
process SIGINT. A trial ends `completed`, `interrupted` (KeyboardInterrupt, the right outcome) or `broken` (another
exception: the pool's locks were left inconsistent); after it, a thread still alive a second later is `stuck` (it
waits for ever on a lock the interrupted main thread kept, and the process would hang at exit, which waits for it).
A trial that hangs for 20 s dumps every thread's stack and ends the process with exit code 1. Exit code 1 too when
`held` breaks or leaves a thread stuck once.

2026-12-03, AMD EPYC Zen 4 (family 25 model 17, 2 cores), CPython 3.11.7, 3 × 3000 trials each:
- plain: 60 broken (RuntimeError: release unlocked lock), 3 stuck (a worker whose start was interrupted, waiting for
  ever on the lock of its `started` event). That hang made CI's test_ctrl_c_leaves_no_store time out: the same
  test by hand hung 1 time in 120 (a worker in `_idle_semaphore.release()`, the main thread in the pool's shutdown).
- held: none broken, none stuck, every trial but one interrupted (one ended before its timer fired).
"""
import contextlib, faulthandler, os, random, signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

@contextlib.contextmanager
def raised_where_it_lands():
    yield lambda: None

def trial(deferred) -> None:
    try:
        signal.setitimer(signal.ITIMER_REAL, random.uniform(0, 0.004))
        with deferred() as check:
            ex = ThreadPoolExecutor(max_workers=1)
            try:
                for _ in ex.map(lambda i: sum(range(300)), range(400)): check()
            finally: ex.shutdown(wait=True, cancel_futures=True)
    finally: signal.setitimer(signal.ITIMER_REAL, 0)
    time.sleep(0.005)   # a SIGINT still on its way lands here, inside the trial

def main(mode: str, trials: int) -> None:
    if mode == 'held': from brainmri.core import deferred_interrupt as deferred
    elif mode == 'plain': deferred = raised_where_it_lands
    else: sys.exit(f"mode={mode!r}: plain or held")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGALRM, lambda s, f: os.kill(os.getpid(), signal.SIGINT))
    counts, stuck = dict(completed=0, interrupted=0, broken=0, stuck=0), set()
    for _ in range(trials):
        faulthandler.dump_traceback_later(20, exit=True)
        try: trial(deferred); counts['completed'] += 1
        except KeyboardInterrupt: counts['interrupted'] += 1
        except Exception as e: counts['broken'] += 1; print(f'broken: {type(e).__name__}: {e}', flush=True)
        faulthandler.cancel_dump_traceback_later()
        # threading.enumerate() also lists a thread whose start was interrupted (is_alive() says False for it)
        deadline = time.time() + 1
        while (left := set(threading.enumerate()) - stuck - {threading.main_thread()}) and time.time() < deadline:
            time.sleep(0.01)
        for t in left: stuck.add(t); counts['stuck'] += 1; print(f'stuck: {t.name}', flush=True)
    print(f'{mode}: {trials} trials, {counts}', flush=True)
    failed = mode == 'held' and (counts['broken'] or counts['stuck'])
    os._exit(int(bool(failed)))   # not sys.exit: the interpreter's exit would wait for a stuck thread for ever

if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'held', int(sys.argv[2]) if len(sys.argv) > 2 else 3000)
