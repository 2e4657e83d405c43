"""The scheduler, driven by fake replies: no cluster, a few seconds in all.

A fake messenger records the messages the scheduler sends and a fake engine
answers them as each test says: results, a lost engine, stopped tasks. The
fold index is the real one, over small arrays, with a fake store.
"""

import functools
import queue
import shutil
import threading
import time
import types

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sklearn_ipp._checkpoint import DirectoryCheckpoint, SavedFits
from sklearn_ipp._exceptions import BackendStoppedError, EngineLostError
from sklearn_ipp._folds import FoldIndex
from sklearn_ipp._hosts import EngineLosses
from sklearn_ipp._messages import ENGINE_LOST, STOPPED
from sklearn_ipp._scheduler import (
    MESSAGES_PER_ENGINE,
    Job,
    Scheduler,
    Task,
    TaskQueues,
    _code,
)

TIMEOUT = 10


class FakeRoster:
    def __init__(self, n_engines=2):
        self.ready = dict.fromkeys(range(n_engines), "host")
        self.probing = False
        self.error = None  # raised by the next refresh

    def refresh(self):
        error, self.error = self.error, None
        if error is not None:
            raise error


class FakeHandle:
    def __init__(self, number):
        self.number = number
        self.engine_id = number % 2


class FakeMessenger:
    """Keeps messages in flight as the real one does; replies come from tests."""

    def __init__(self):
        self.outbox = queue.Queue()  # handles of messages sent
        self.sent = []  # the task lists, in the order sent
        self.replies = {}
        self.stopped = []
        self.stranded = []
        self._in_flight = {}
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._in_flight)

    def send(self, tasks):
        with self._lock:
            self._count += 1
            handle = FakeHandle(self._count)
            self._in_flight[handle] = tasks
            self.sent.append(list(tasks))
        self.outbox.put(handle)
        return True

    def take(self, handle):
        with self._lock:
            return self._in_flight.pop(handle, None)

    def take_stranded(self):
        with self._lock:
            stranded = [self._in_flight.pop(h) for h in self.stranded]
            self.stranded = []
        return stranded

    def take_all(self, owner=None):
        with self._lock:
            taken = {
                handle: tasks
                for handle, tasks in self._in_flight.items()
                if owner is None or tasks[0].owner is owner
            }
            for handle in taken:
                del self._in_flight[handle]
        return list(taken), [task for tasks in taken.values() for task in tasks]

    def read(self, handle, tasks):
        reply = self.replies.pop(handle)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def stop(self, handles, end_stuck=True):
        self.stopped.extend(handles)


class Harness:
    """A scheduler with fake parts, and a fake engine answering it."""

    def __init__(
        self, n_engines=2, retries=3, engine_wait=60.0, on_done=None, on_progress=None
    ):
        self.roster = FakeRoster(n_engines)
        self.messenger = FakeMessenger()
        self.written, self.removed = [], []
        self.folds = FoldIndex(self._write, self.removed.append)
        self.done = []
        self._on_done = on_done
        self.scheduler = Scheduler(
            self.roster,
            self.messenger,
            self.folds,
            EngineLosses(self.roster, retries, engine_wait, ""),
            on_done=self._record,
            on_progress=on_progress,
        )

    def _write(self, obj, rows=None, columns=None):
        ref = f"file-{len(self.written)}"
        self.written.append((ref, None if rows is None else len(rows)))
        return ref

    def _record(self, task, ok, value):
        self.done.append((task, ok))
        if self._on_done is not None:
            self._on_done(task, ok, value)

    def __enter__(self):
        self.scheduler.start()
        self.scheduler.start_call()
        return self

    def __exit__(self, *exc_info):
        self.scheduler.shutdown()

    def submit(self, tasks, saved=()):
        self.scheduler.submit(tasks, list(saved))
        self.scheduler.release()

    def next_message(self):
        handle = self.messenger.outbox.get(timeout=TIMEOUT)
        return handle, self.messenger.sent[handle.number - 1]

    def reply(self, handle, outcomes, seconds=None):
        self.messenger.replies[handle] = (outcomes, seconds)
        self.scheduler.message_done(handle)

    def answer_all(self, seconds_per_task=0.001, until=None):
        """Answer every message with each task's ``args[0]``, till all done."""
        until = until or (lambda: False)
        deadline = time.monotonic() + TIMEOUT
        while not until():
            assert time.monotonic() < deadline, "timed out"
            try:
                handle = self.messenger.outbox.get(timeout=0.05)
            except queue.Empty:
                continue
            tasks = self.messenger.sent[handle.number - 1]
            outcomes = [(True, task.args[0]) for task in tasks]
            self.reply(handle, outcomes, [seconds_per_task] * len(tasks))


def plain_tasks(n, job=None, callback=None):
    job = job or Job(n, callback)
    return job, [Task(job, i, abs, (i,), {}) for i in range(n)]


def fit_tasks(folds, n_candidates, n_splits, n_samples=40, job=None):
    """Tasks as sklearn's search makes them: candidates x splits, split-major."""
    rng = np.random.RandomState(0)
    X, y = rng.standard_normal((n_samples, 3)), rng.randint(0, 2, n_samples)
    splits = np.array_split(np.arange(n_samples), n_splits)
    candidates = [{"C": float(c)} for c in range(1, n_candidates + 1)]
    job = job or Job(n_candidates * n_splits, None)
    tasks = []
    for candidate, parameters in enumerate(candidates):
        for split, test in enumerate(splits):
            train = np.setdiff1d(np.arange(n_samples), test)
            arguments = {
                "estimator": LogisticRegression(),
                "X": X,
                "y": y,
                "train": train,
                "test": test,
                "parameters": parameters,
                "fit_params": None,
                "candidate_progress": (candidate, n_candidates),
                "split_progress": (split, n_splits),
            }
            task = Task(job, len(tasks), abs, (len(tasks),), {})
            task.arguments = arguments
            task.split_key, task.fold, task.rows = folds.fold_of(arguments)
            tasks.append(task)
    return job, tasks


def wait_for(condition):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_tasks_run_in_their_order_and_results_reach_the_job():
    with Harness() as harness:
        job, tasks = plain_tasks(6)
        for task, position in zip(tasks, [2, 1, 0, 2, 1, 0], strict=True):
            task.position = position
        harness.submit(tasks)
        harness.answer_all(until=job.done.is_set)
        assert job.get(0) == list(range(6))
    sent = [task.index for message in harness.messenger.sent for task in message]
    assert sent == [2, 5, 1, 4, 0, 3]  # by position, then as submitted
    assert harness.scheduler.n_done == harness.scheduler.n_submitted == 6


def test_short_tasks_share_messages_across_stored_folds():
    with Harness(n_engines=1) as harness:
        job, tasks = fit_tasks(harness.folds, n_candidates=2, n_splits=5)
        harness.submit(tasks)
        # The first message measures how long a task takes; then messages
        # carry several, from several folds.
        harness.answer_all(seconds_per_task=0.001, until=job.done.is_set)
        assert job.get(0) == list(range(10))
    sizes = [len(message) for message in harness.messenger.sent]
    assert sizes[0] == 1 and max(sizes) > 1
    assert max(len({task.key for task in m}) for m in harness.messenger.sent) > 1
    # Every split stored once, with all its rows, and removed once done.
    assert len(harness.written) == 2 * 5
    assert sorted(harness.removed) == sorted(ref for ref, _ in harness.written)


def test_large_folds_are_stored_one_at_a_time():
    with Harness(n_engines=1) as harness:
        harness.folds.small_folds_bytes = 0  # every fold counts as large
        job, tasks = fit_tasks(harness.folds, n_candidates=2, n_splits=3)
        harness.submit(tasks)
        live, n_answered = [], 0
        while n_answered < len(tasks):
            handle, sent = harness.next_message()
            live.append(len(harness.written) - len(harness.removed))
            harness.reply(handle, [(True, t.args[0]) for t in sent], [1.0] * len(sent))
            n_answered += len(sent)
        assert job.get(TIMEOUT) == list(range(6))
        assert max(live) == 2  # X and y of one fold
    keys = [message[0].key for message in harness.messenger.sent]
    assert keys == sorted(keys, key=keys.index)  # fold by fold, never back


def test_tasks_of_a_lost_engine_are_sent_again_then_fail():
    with Harness(retries=1) as harness:
        job, tasks = plain_tasks(1)
        harness.submit(tasks)
        handle, sent = harness.next_message()
        harness.reply(handle, ENGINE_LOST)
        handle, sent_again = harness.next_message()  # retried once
        assert sent_again == sent
        harness.reply(handle, ENGINE_LOST)
        assert job.done.wait(TIMEOUT)
        with pytest.raises(EngineLostError, match="retries=1"):
            job.get(0)
        assert harness.scheduler.n_retried == 1


def test_a_stopped_task_is_sent_again_without_counting_an_attempt():
    with Harness(retries=0) as harness:
        job, tasks = plain_tasks(2)
        harness.submit(tasks)
        first, first_tasks = harness.next_message()
        harness.reply(first, [STOPPED] * len(first_tasks))
        harness.answer_all(until=job.done.is_set)
        assert job.get(0) == [0, 1]
        assert harness.scheduler.n_stopped == len(first_tasks)
        assert all(task.attempts == 0 for task in tasks)


def test_messages_stranded_on_engines_gone_are_sent_again():
    with Harness() as harness:
        job, tasks = plain_tasks(1)
        harness.submit(tasks)
        handle, sent = harness.next_message()
        harness.messenger.stranded = [handle]
        harness.scheduler.wake()
        handle, sent_again = harness.next_message()
        assert sent_again == sent
        harness.reply(handle, [(True, 7)])
        assert job.get(TIMEOUT) == [7]


def test_a_failing_checkpoint_write_fails_the_task_instead_of_hanging():
    def failing_save(task, ok, value):
        raise OSError(28, "No space left on device")

    with Harness(on_done=failing_save) as harness:
        job, tasks = plain_tasks(3)
        harness.submit(tasks)
        harness.answer_all(until=job.done.is_set)
        with pytest.raises(OSError, match="No space left"):
            job.get(0)


def test_saved_results_are_handed_back_without_being_sent():
    with Harness() as harness:
        job, tasks = plain_tasks(3)
        harness.submit(tasks[1:], saved=[(tasks[0], "saved")])
        harness.answer_all(until=job.done.is_set)
        assert job.get(0) == ["saved", 1, 2]
    assert [t.index for m in harness.messenger.sent for t in m] == [1, 2]


def test_stop_drops_queued_tasks_and_stops_messages_in_flight():
    with Harness(n_engines=1) as harness:
        job, tasks = fit_tasks(harness.folds, n_candidates=3, n_splits=2)
        harness.submit(tasks)
        handle, _ = harness.next_message()
        wait_for(lambda: len(harness.messenger) == 2)  # 2 per engine
        harness.scheduler.stop()
        assert handle in harness.messenger.stopped
        assert len(harness.messenger) == 0
        # Nothing queued is sent any more, and the folds are released.
        time.sleep(0.3)
        assert len(harness.messenger.sent) == 2
        wait_for(lambda: len(harness.removed) == len(harness.written))
        # The stopped tasks end, with an error that says why: whoever waits
        # for them learns it instead of waiting for ever.
        assert job.done.is_set()
        with pytest.raises(BackendStoppedError, match="stopped before it ended"):
            job.get(0)


def test_stop_with_an_error_fails_every_task_and_later_submissions():
    error = RuntimeError("aborted")
    with Harness() as harness:
        job, tasks = plain_tasks(4)
        harness.submit(tasks)
        harness.next_message()
        harness.scheduler.stop(error, cancel=True)
        assert job.done.wait(TIMEOUT)
        with pytest.raises(RuntimeError, match="aborted"):
            job.get(0)
        with pytest.raises(RuntimeError, match="aborted"):
            harness.submit(plain_tasks(1)[1])


def test_a_call_without_engines_fails_after_engine_wait():
    with Harness(n_engines=0, engine_wait=0.2) as harness:
        job, tasks = plain_tasks(2)
        harness.submit(tasks)
        assert job.done.wait(TIMEOUT)
        with pytest.raises(EngineLostError, match="none came back"):
            job.get(0)


def test_shutdown_stops_the_thread_and_removes_every_fold():
    harness = Harness()
    with harness:
        _, tasks = fit_tasks(harness.folds, n_candidates=1, n_splits=2)
        harness.submit(tasks)
        harness.next_message()
        thread = harness.scheduler._thread
    assert not thread.is_alive()
    assert sorted(harness.removed) == sorted(ref for ref, _ in harness.written)
    assert harness.messenger.stopped  # the message in flight was stopped


def test_a_reply_that_cannot_be_read_fails_its_tasks():
    with Harness(n_engines=1) as harness:
        job, tasks = plain_tasks(2)
        harness.submit(tasks)
        handle, _ = harness.next_message()
        harness.messenger.replies[handle] = ValueError("garbled reply")
        harness.scheduler.message_done(handle)
        harness.answer_all(until=job.done.is_set)
        with pytest.raises(ValueError, match="garbled"):
            job.get(0)


def test_an_error_in_the_scheduling_thread_fails_the_call_not_the_next():
    with Harness(n_engines=1) as harness:
        job, tasks = plain_tasks(4)
        harness.submit(tasks)
        harness.next_message()
        harness.roster.error = RuntimeError("roster broke")
        harness.scheduler.wake()
        assert job.done.wait(TIMEOUT)
        with pytest.raises(RuntimeError, match="roster broke"):
            job.get(0)
    # joblib ends every call with terminate(); the next call starts afresh.
    with harness:
        job, tasks = plain_tasks(2)
        harness.submit(tasks)
        harness.answer_all(until=job.done.is_set)
        assert job.get(0) == [0, 1]


@pytest.mark.parametrize("failing_call", [1, 3])
def test_a_failing_progress_display_ends_the_call_instead_of_hanging(failing_call):
    calls = []

    def on_progress(n_done, n_submitted):
        calls.append(n_done)
        if len(calls) == failing_call:
            raise OSError("the progress bar's stream is closed")

    with Harness(n_engines=1, on_progress=on_progress) as harness:
        job, tasks = plain_tasks(3)
        harness.submit(tasks)
        harness.answer_all(until=job.done.is_set)
        if failing_call < 3:
            # The tasks still to come fail with the display's error.
            with pytest.raises(OSError, match="stream is closed"):
                job.get(0)
        else:
            # The last task's display failed: every result is there.
            assert job.get(0) == [0, 1, 2]


def test_tasks_of_a_reply_being_handled_when_the_thread_fails_fail_too():
    with Harness(n_engines=1) as harness:
        job, tasks = plain_tasks(1)
        harness.submit(tasks)
        handle, _ = harness.next_message()
        harness.reply(handle, 42)  # not one outcome per task: the thread fails
        assert job.done.wait(TIMEOUT)
        with pytest.raises(TypeError):
            job.get(0)


def test_a_failing_checkpoint_write_names_the_directory_and_the_fix(tmp_path):
    checkpoint = DirectoryCheckpoint(tmp_path / "fits")
    saved = SavedFits(checkpoint)
    _, (task,) = fit_tasks(FoldIndex(None, None), n_candidates=1, n_splits=1)
    shutil.rmtree(checkpoint.path)  # the directory is gone: the write fails
    with pytest.raises(OSError, match="checkpoint directory") as info:
        saved.save(task, {"test_scores": 1.0, "fit_error": None})
    assert "checkpoint_dir=" in str(info.value)
    assert str(tmp_path / "fits") in str(info.value)


def test_tasks_submitted_after_the_thread_failed_fail_at_once():
    with Harness(n_engines=1) as harness:
        harness.roster.error = RuntimeError("versions differ")
        harness.scheduler.wake()
        wait_for(lambda: not harness.scheduler._thread.is_alive())
        with pytest.raises(RuntimeError, match="versions differ"):
            harness.submit(plain_tasks(2)[1])


def test_errors_are_told_in_the_order_of_their_batches():
    from sklearn_ipp._scheduler import ErrorsInOrder, Job

    told = []
    order = ErrorsInOrder()
    jobs = [Job(2, order.callback(lambda job, i=i: told.append(i))) for i in range(4)]

    def finish(i, error=None):
        if error is not None:
            jobs[i].fail(1, error)
            jobs[i].fail(0, ValueError(f"first of batch {i}"))
        jobs[i].callback(jobs[i])

    finish(2, KeyError("late"))  # waits for batches 0 and 1
    finish(3)  # a success is told at once
    assert told == [3]
    finish(1, KeyError("second"))
    assert told == [3]
    finish(0)
    assert told == [3, 0, 1, 2]
    # A batch raises its first task's error, whatever came first.
    assert str(jobs[1].exception) == "first of batch 1"


def _with_prefixes(folds, tasks):
    """Point fit tasks at a pipeline prefix per split, as the backend does."""
    for task in tasks:
        task.prefix = folds.prefix_of(
            task.split_key, task.fold, task.rows, ((1,), b"token"), task.arguments
        )
    return tasks


def _answer_with_prefixes(harness, until, prefix_ok=True):
    """Answer as engines do: a prefix's output, or the task's ``args[0]``."""
    from sklearn_ipp._prefix import PrefixOutput

    answered = []  # (kind, task) in the order the replies were given
    while not until():
        try:
            handle = harness.messenger.outbox.get(timeout=0.05)
        except queue.Empty:
            continue
        outcomes = []
        for task in harness.messenger.sent[handle.number - 1]:
            if task.internal:
                n_train, n_test = task.rows, len(task.fold.test)
                output = PrefixOutput(
                    np.zeros((n_train + n_test, 2)),
                    None,
                    np.zeros(4, np.uint8),
                    0.2,
                    0.1,
                    n_train,
                    n_test,
                )
                outcomes.append((True, output) if prefix_ok else (False, ValueError()))
                answered.append(("prefix", task))
            else:
                outcomes.append((True, task.args[0]))
                answered.append(("fit", task))
        harness.reply(handle, outcomes, [0.001] * len(outcomes))
    return answered


def test_prefix_tasks_go_before_their_candidates_then_are_removed():
    with Harness(n_engines=1) as harness:
        job, tasks = fit_tasks(harness.folds, n_candidates=3, n_splits=2)
        harness.submit(_with_prefixes(harness.folds, tasks))
        answered = _answer_with_prefixes(harness, until=job.done.is_set)
        assert job.get(0) == list(range(6))
    prefixes = [task for kind, task in answered if kind == "prefix"]
    assert len(prefixes) == 2  # one per split, for its 3 candidates
    for position, (kind, task) in enumerate(answered):
        if kind == "fit":  # after its prefix's reply
            done = [t.fits for k, t in answered[:position] if k == "prefix"]
            assert task.prefix in done
    assert harness.folds.n_prefix_fits == 2
    # Internal tasks are not counted as the call's.
    assert harness.scheduler.n_done == harness.scheduler.n_submitted == 6
    # The splits and the prefixes' rows and steps, all removed.
    assert len(harness.written) == 2 * 2 + 2 * 2
    assert sorted(harness.removed) == sorted(ref for ref, _ in harness.written)


def test_candidates_of_a_failed_prefix_run_whole():
    with Harness(n_engines=2) as harness:
        job, tasks = fit_tasks(harness.folds, n_candidates=2, n_splits=2)
        harness.submit(_with_prefixes(harness.folds, tasks))
        _answer_with_prefixes(harness, until=job.done.is_set, prefix_ok=False)
        assert job.get(0) == list(range(4))
    # Sent to run whole, on their split's fold.
    assert not any(task.on_prefix for task in tasks)
    assert harness.folds.n_prefix_fits == 0


def test_a_prefix_for_one_candidate_is_not_fitted_when_all_tasks_came():
    with Harness(n_engines=1) as harness:
        job, tasks = fit_tasks(harness.folds, n_candidates=2, n_splits=2)
        # Each candidate its own prefix: nothing to share.
        for task in tasks:
            token = str(task.arguments["parameters"]).encode()
            task.prefix = harness.folds.prefix_of(
                task.split_key, task.fold, task.rows, ((1,), token), task.arguments
            )
        harness.submit(tasks)
        answered = _answer_with_prefixes(harness, until=job.done.is_set)
    assert [kind for kind, _ in answered] == ["fit"] * 4
    assert not any(task.on_prefix for task in tasks)


def _candidate_tasks(n_candidates, n_splits):
    """Tasks without data, candidate after candidate, each of its own kind."""
    job = Job(n_candidates * n_splits, None)
    tasks = []
    for candidate in range(n_candidates):
        parameters = {"C": candidate}
        for _ in range(n_splits):
            task = Task(job, len(tasks), abs, (len(tasks),), {})
            task.arguments = {"parameters": parameters}
            task.order = (0, 0, len(tasks))
            tasks.append(task)
    return tasks


def _drain(queues, n_in_flight_max):
    sent = []
    while True:
        message = queues.next_message(n_in_flight_max)
        if not message:
            return sent
        sent.extend(task.arguments["parameters"]["C"] for task in message)


def test_the_last_tasks_go_longest_first_and_the_others_in_order(monkeypatch):
    n_kind = []
    kind = Task.kind
    monkeypatch.setattr(
        Task, "kind", property(lambda t: n_kind.append(1) or kind.fget(t))
    )
    for n_in_flight_max, expected in [
        # Every task fits in flight: the longest candidates go first.
        (100, [1] * 4 + [2] * 4 + [0] * 4),
        # More tasks than fit in flight: in order, one per message.
        (4, [0] * 4 + [1] * 4 + [2] * 4),
    ]:
        queues = TaskQueues()
        tasks = _candidate_tasks(3, 4)
        for task in tasks:
            queues.add(task)
        # Durations of each candidate on an earlier fold: 2 s on average, so
        # one task per message.
        queues.record_durations([tasks[0], tasks[4], tasks[8]], [0.1, 5.0, 1.0])
        n_kind.clear()
        sent = _drain(queues, n_in_flight_max)
        if n_in_flight_max == 100:
            assert sent == expected
            # Sorted once, not scanned whole for each of the 12 messages.
            assert len(n_kind) <= 12
        else:
            # Once 4 or fewer are left, those go longest first too.
            assert sent[:8] == expected[:8]


def _message_sizes(queues, n_engines, in_flight=0):
    """Drain ``queues`` as the scheduler would with ``in_flight`` messages out."""
    sizes = []
    while True:
        message = queues.next_message(MESSAGES_PER_ENGINE * n_engines, in_flight)
        if not message:
            return sizes
        sizes.append(len(message))
        in_flight += 1


def _queued(n_tasks, seconds, queues=None):
    """Queue ``n_tasks`` tasks of one call, timed at ``seconds`` each."""
    queues = TaskQueues() if queues is None else queues
    _, tasks = plain_tasks(n_tasks)
    for task in tasks:
        task.order = (1, 0, task.index)
        queues.add(task)
    queues.record_durations(tasks[:1], [seconds])
    return queues


def test_short_work_goes_in_one_message_per_idle_engine():
    # 4 tasks of a millisecond on 2 engines: one message each, not one per
    # task (each message costs the client, controller and engine more).
    queues = _queued(4, 0.001)
    assert _message_sizes(queues, n_engines=2) == [2, 2]
    # One engine busy with a message already: the other takes them all.
    _queued(4, 0.001, queues)
    assert _message_sizes(queues, n_engines=2, in_flight=1) == [4]


def test_longer_work_is_spread_over_every_message_in_flight():
    # 16 tasks of 50 ms on 2 engines: 400 ms each, balanced over the two
    # messages in flight per engine as they are sent.
    assert _message_sizes(_queued(16, 0.05), n_engines=2)[:4] == [4, 3, 3, 2]
    # The last 11 tasks of 5 ms, one engine still busy: not all for the idle
    # one, which the other would then wait for.
    sizes = _message_sizes(_queued(11, 0.005), n_engines=2, in_flight=1)
    assert sizes[0] == 3


def test_message_sizes_are_learnt_for_each_code_the_tasks_run():
    queues = TaskQueues()
    _, quick = plain_tasks(4)
    queues.record_durations(quick[:1], [0.001])
    job = Job(4, None)
    slow = [Task(job, i, time.sleep, (0.5,), {}) for i in range(4)]
    for task in slow:
        task.order = (2, 0, task.index)
        queues.add(task)
    # Nothing is known of time.sleep: one task per message, whatever abs took.
    assert _message_sizes(queues, n_engines=2) == [1, 1, 1, 1]
    # scikit-learn's wrapper and partials name the code they call.
    assert _code(functools.partial(abs, 1)) == _code(abs) == ("builtins", "abs")
    wrapped = types.SimpleNamespace(function=time.sleep)
    assert _code(wrapped) == _code(time.sleep)
