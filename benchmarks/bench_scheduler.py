"""The client's scheduler with 10 to 1,000 simulated engines and 100,000 fits.

The real ``Scheduler``, ``TaskQueues`` and ``FoldIndex`` (over a fake store)
run without a cluster: a simulated cluster answers each message once its
engine has spent the message's cost plus the durations of its fits, in
simulated time, and the scheduler's ``step()`` runs after each event, as its
thread would when woken. Fits are ``_fit_and_score`` tasks as scikit-learn's
search makes them (candidates x splits of one X), their durations drawn from
a log-normal distribution. Engines can die (their running message is lost and
its fits sent again) and join during the run.

Reported per run:

- **client CPU per fit**: the CPU time of the scheduler's own work (submitting
  the tasks, taking the replies, every ``step()``) over the number of fits;
  the simulated cluster's bookkeeping is left out, and so is what the real
  messenger adds (pickling each message, ZeroMQ), which is per message;
  **fold us** is the backend's lookup of each task's fold before that
  (``FoldIndex.fold_of``), also client CPU;
- **efficiency**: the work of the fits over the engine time available until
  the last fit ends (engines count from when they join to when they die);
- **list bound**: the same for greedy list scheduling of the same fits in
  the same order on the same engines, with no message cost and perfect
  knowledge (each fit to the first engine free), for runs without deaths or
  joins; **x bound** is the scheduler's efficiency over that one.

Run: ``python benchmarks/bench_scheduler.py`` (10, 100 and 1,000 engines, 100,000
fits, then the same with engine deaths and joins).
"""

import argparse
import heapq
import itertools
import time
from collections import deque

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import KFold

from sklearn_ipp._folds import FoldIndex
from sklearn_ipp._hosts import EngineLosses
from sklearn_ipp._messages import ENGINE_LOST
from sklearn_ipp._scheduler import Job, Scheduler, Task


class SimulatedRoster:
    """The engines ready for tasks, as the simulation makes them come and go."""

    def __init__(self):
        self.ready = {}
        self.probing = False

    def refresh(self):
        """Nothing to ask: the simulation updates ``ready`` itself."""


class Handle:
    """A message sent, and the engine that takes it."""

    __slots__ = ("engine_id", "number")

    def __init__(self, number):
        self.number, self.engine_id = number, None


class SimulatedCluster:
    """Engines and the controller's queue, in simulated time; the messenger.

    The controller gives each message to an idle engine in the order they
    came (ipyparallel's task scheduler with its default high-water mark of
    one message per engine); an engine runs one message at a time.

    Parameters
    ----------
    durations : ndarray
        Seconds of each fit, by the fit's number (``task.args[0]``).
    message_seconds : float
        What one message costs an engine beyond its fits: the round trip
        through the controller, unpickling, the reply.
    """

    def __init__(self, durations, message_seconds):
        self.durations = durations
        self.message_seconds = message_seconds
        self.now = 0.0
        self.roster = SimulatedRoster()
        self.scheduler = None
        self.n_messages = 0
        self.joined_at, self.died_at = {}, {}
        self._events = []  # (time, sequence, action, argument)
        self._sequence = itertools.count()
        self._idle = deque()
        self._waiting = deque()  # messages the controller holds
        self._running = {}  # engine id -> handle
        self._in_flight = {}  # handle -> tasks, until taken by the scheduler
        self._replies = {}

    # The simulation ------------------------------------------------------

    def at(self, when, action, argument):
        """Call ``action(argument)`` at simulated time ``when``."""
        heapq.heappush(self._events, (when, next(self._sequence), action, argument))

    def join(self, engine_id):
        """Register a new engine, ready for messages now."""
        self.joined_at[engine_id] = self.now
        self.roster.ready[engine_id] = "host"
        self._idle.append(engine_id)
        self._dispatch()

    def die(self, engine_id):
        """End an engine: its running message is lost, as ipyparallel says."""
        if engine_id not in self.roster.ready:
            return
        self.died_at[engine_id] = self.now
        del self.roster.ready[engine_id]
        if engine_id in self._idle:
            self._idle.remove(engine_id)
        handle = self._running.pop(engine_id, None)
        if handle is not None:
            self._replies[handle] = (ENGINE_LOST, None)
            self.scheduler.message_done(handle)

    def _reply(self, handle):
        engine_id = handle.engine_id
        if self._running.get(engine_id) is not handle:  # its engine died
            return
        del self._running[engine_id]
        tasks = self._in_flight[handle]
        seconds = [float(self.durations[task.args[0]]) for task in tasks]
        self._replies[handle] = ([(True, task.args[0]) for task in tasks], seconds)
        self._idle.append(engine_id)
        self.scheduler.message_done(handle)
        self._dispatch()

    def _dispatch(self):
        while self._waiting and self._idle:
            handle, engine_id = self._waiting.popleft(), self._idle.popleft()
            if handle not in self._in_flight:  # taken back by stop()
                self._idle.appendleft(engine_id)
                continue
            handle.engine_id = engine_id
            self._running[engine_id] = handle
            work = sum(self.durations[task.args[0]] for task in self._in_flight[handle])
            self.at(self.now + self.message_seconds + work, self._reply, handle)

    def next_events(self, tick):
        """Run the next event and those within ``tick`` s of it; False if none.

        The scheduling thread, once woken, handles every reply that came
        meanwhile: the events of one tick are its one wake-up.
        """
        if not self._events:
            return False
        end = self._events[0][0] + tick
        while self._events and self._events[0][0] <= end:
            self.now, _, action, argument = heapq.heappop(self._events)
            action(argument)
        return True

    # The messenger's interface, as the scheduler uses it ---------------------

    def __len__(self):
        return len(self._in_flight)

    def send(self, tasks):
        """Queue a message at the controller; it goes to the next idle engine."""
        self.n_messages += 1
        handle = Handle(self.n_messages)
        self._in_flight[handle] = list(tasks)
        self._waiting.append(handle)
        self._dispatch()
        return True

    def take(self, handle):
        """Return a message's tasks, once, and forget it."""
        return self._in_flight.pop(handle, None)

    def take_stranded(self):
        """Return no message: the controller's queue is open to every engine."""
        return []

    def take_all(self, owner=None):
        """Forget every message in flight; return their handles and tasks.

        Every call of the simulation is the same owner's.
        """
        in_flight, self._in_flight = self._in_flight, {}
        return list(in_flight), [task for tasks in in_flight.values() for task in tasks]

    def read(self, handle, tasks):
        """Return a message's ``(outcomes, seconds)``."""
        return self._replies.pop(handle)

    def stop(self, handles, end_stuck=True):
        """Stop nothing: a simulated engine has no signal to receive."""


def fit_tasks(folds, n_fits, n_splits, job):
    """Make the tasks of a search of ``n_fits // n_splits`` candidates."""
    rng = np.random.RandomState(0)
    X, y = rng.standard_normal((1000, 10)), rng.randint(0, 2, 1000)
    splits = list(KFold(n_splits).split(X))
    n_candidates = n_fits // n_splits
    estimator = DummyClassifier()
    tasks = []
    for candidate in range(n_candidates):
        parameters = {"constant": None, "strategy": "prior", "random_state": candidate}
        for split, (train, test) in enumerate(splits):
            task = Task(job, len(tasks), abs, (len(tasks),), {})
            task.arguments = {
                "estimator": estimator,
                "X": X,
                "y": y,
                "train": train,
                "test": test,
                "parameters": parameters,
                "fit_params": None,
                "candidate_progress": (candidate, n_candidates),
                "split_progress": (split, n_splits),
            }
            task.split_key, task.fold, task.rows = folds.fold_of(task.arguments)
            tasks.append(task)
    return tasks


def list_schedule(durations, n_engines):
    """Makespan of greedy list scheduling: each fit, in order, to the first free."""
    free = [0.0] * n_engines
    for duration in durations:
        heapq.heapreplace(free, free[0] + duration)
    return max(free)


def simulate(
    n_engines, n_fits, median, sigma, message_seconds, churn, tick=0.001, seed=0
):
    """Run one simulation; return its row of the table."""
    durations = np.random.RandomState(seed).lognormal(np.log(median), sigma, n_fits)
    cluster = SimulatedCluster(durations, message_seconds)
    folds = FoldIndex(lambda obj, rows=None, columns=None: object(), lambda ref: None)
    job = Job(n_fits, None)
    # What the backend does per task before the scheduler sees it: find the
    # task's fold (hashes of X, y and the split, cached by object).
    lookup = time.process_time()
    tasks = fit_tasks(folds, n_fits, 5, job)
    lookup = time.process_time() - lookup
    scheduler = Scheduler(
        cluster.roster,
        cluster,
        folds,
        EngineLosses(cluster.roster, 3, None, ""),
        on_done=lambda task, ok, value: None,
    )
    cluster.scheduler = scheduler
    for engine_id in range(n_engines):
        cluster.join(engine_id)
    ideal = durations.sum() / n_engines
    if churn:
        # A tenth of the engines die during the first half of the run, and
        # as many new ones join during the second half.
        rng = np.random.RandomState(seed + 1)
        n_changed = max(1, n_engines // 10)
        dying = rng.choice(n_engines, n_changed, replace=False)
        for engine_id, when in zip(
            dying, rng.uniform(0, ideal / 2, n_changed), strict=True
        ):
            cluster.at(when, cluster.die, int(engine_id))
        joining = range(n_engines, n_engines + n_changed)
        for engine_id, when in zip(
            joining, rng.uniform(ideal / 2, ideal, n_changed), strict=True
        ):
            cluster.at(when, cluster.join, engine_id)

    cpu = time.process_time()
    scheduler.start(thread=False)  # this loop calls step() instead
    scheduler.start_call()
    scheduler.submit(tasks, [])
    scheduler.release()
    scheduler.step()
    simulation_cpu = 0.0
    while scheduler.n_done < n_fits:
        start = time.process_time()
        if not cluster.next_events(tick):
            raise RuntimeError(f"stuck: {scheduler.n_done} of {n_fits} fits done")
        simulation_cpu += time.process_time() - start
        scheduler.step()
    cpu = time.process_time() - cpu - simulation_cpu
    makespan = cluster.now
    assert job.get(0) == list(range(n_fits))  # every result, once

    capacity = sum(
        min(cluster.died_at.get(engine_id, makespan), makespan) - joined
        for engine_id, joined in cluster.joined_at.items()
    )
    efficiency = durations.sum() / capacity
    bound = None
    if not churn:
        bound = durations.sum() / (n_engines * list_schedule(durations, n_engines))
    return {
        "engines": n_engines,
        "fits": n_fits,
        "churn": churn,
        "cpu_us_per_fit": 1e6 * cpu / n_fits,
        "fold_us_per_fit": 1e6 * lookup / n_fits,
        "messages": cluster.n_messages,
        "retried": scheduler.n_retried,
        "makespan": makespan,
        "efficiency": efficiency,
        "bound": bound,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--fits", type=int, default=100_000)
    parser.add_argument(
        "--median", type=float, default=1.0, help="median fit duration (s)"
    )
    parser.add_argument(
        "--sigma", type=float, default=1.0, help="log-normal shape of the durations"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each case; CPU times are their median (this machine is noisy)",
    )
    parser.add_argument(
        "--tick",
        type=float,
        default=0.001,
        help="replies within this many seconds are handled in one step (s)",
    )
    parser.add_argument(
        "--message-seconds",
        type=float,
        default=0.01,
        help="cost of one message to an engine beyond its fits (s)",
    )
    args = parser.parse_args(argv)
    # Imported here: tests load this module by path, without benchmarks/ on
    # sys.path, and need only simulate().
    import saved_run

    print(saved_run.machine())
    print(
        f"{args.fits} fits, log-normal durations (median {args.median} s, sigma "
        f"{args.sigma}), {1000 * args.message_seconds:g} ms per message, "
        f"replies of {1000 * args.tick:g} ms handled together\n"
    )
    header = (
        f"{'engines':>7}  {'churn':>5}  {'CPU us/fit':>10}  {'fold us':>7}  "
        f"{'messages':>8}  "
        f"{'retried':>7}  {'makespan s':>10}  {'efficiency':>10}  "
        f"{'list bound':>10}  {'x bound':>7}"
    )
    print(header)
    print("-" * len(header))
    for churn in (False, True):
        for n_engines in args.engines:
            runs = [
                simulate(
                    n_engines,
                    args.fits,
                    args.median,
                    args.sigma,
                    args.message_seconds,
                    churn,
                    args.tick,
                )
                for _ in range(args.repeats)
            ]
            # The simulation is deterministic: only the CPU times vary.
            row = runs[0]
            for name in ("cpu_us_per_fit", "fold_us_per_fit"):
                row[name] = float(np.median([run[name] for run in runs]))
            bound = row["bound"]
            print(
                f"{row['engines']:>7}  {'yes' if churn else 'no':>5}  "
                f"{row['cpu_us_per_fit']:>10.1f}  {row['fold_us_per_fit']:>7.1f}  "
                f"{row['messages']:>8}  "
                f"{row['retried']:>7}  {row['makespan']:>10.1f}  "
                f"{row['efficiency']:>10.1%}  "
                + (
                    f"{bound:>10.1%}  {row['efficiency'] / bound:>7.3f}"
                    if bound is not None
                    else f"{'':>10}  {'':>7}"
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
