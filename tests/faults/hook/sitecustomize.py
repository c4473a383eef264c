"""Fault-test instrumentation for real ``rfbench`` subprocesses; inert unless asked for.

The fault tests put this directory on ``PYTHONPATH``; Python imports
``sitecustomize`` at start-up.  Only when ``RFBENCH_FAULT_TRACE`` names a file
does it wrap a few trainer and harness methods so that every unit of work is
appended to that file, one line per event, *after* the event happened:

    <pid> start <G> <P>        training resumed after G batches (0 = fresh start); P=1: inside an epoch
    <pid> batch <epoch> <hash> one training batch stepped (hash of its sample positions)
    <pid> validating <epoch>   the per-epoch validation of ``epoch`` starts
    <pid> val <epoch>          the per-epoch validation of ``epoch`` finished
    <pid> saving <G> <P> / saved <G> <P>   checkpoint-last.pt write begins / is durable
    <pid> eval-start <b,b,...|->   evaluation (re)started; these batches were already in the flag file
    <pid> eval-attack <label> <b>  an attack starts on batch b
    <pid> eval-saving <b,...> / eval-saved <b,...>   flags.npz write (listing its finished batches) begins / is durable

With ``RFBENCH_FAULT_SLOW_WRITE=1`` every checkpoint is written in two halves
through the real :func:`rfbench.core.io.atomic.atomic_write`, with
``<pid> half-written <name>`` and a pause in between: a test that kills the
process on that line kills it in the middle of a checkpoint write, for certain.

Lines go through ``os.write`` on an ``O_APPEND`` descriptor, so a SIGKILL never
loses a line that was written.  The tests compare these traces against an
uninterrupted run's to prove that a resumed run did exactly the missing work.
"""

import os

_TRACE = os.environ.get("RFBENCH_FAULT_TRACE")


def _emit(*parts) -> None:
    fd = os.open(_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(str(p) for p in (os.getpid(), *parts)) + "\n").encode())
    finally:
        os.close(fd)


def _install_trainer_trace() -> None:
    import hashlib
    import time

    from rfbench.benchmark.train import trainer as T

    def n_batches(tr) -> int:
        return -(-len(tr.bundle.train) // tr.cfg.batch_size)

    real_resume, real_save, real_validate = T.Trainer.maybe_resume, T.Trainer._save_last, T.Trainer._validate
    real_build = T.build_defense

    def maybe_resume(self):
        out = real_resume(self)
        done = self.partial["batches_done"] if self.partial else 0
        _emit("start", self.start_epoch * n_batches(self) + done, int(self.partial is not None))
        return out

    def save_last(self, partial=None):
        g = (partial["epoch"] * n_batches(self) + partial["batches_done"]) if partial else len(self.history) * n_batches(self)
        _emit("saving", g, int(partial is not None))
        real_save(self, partial)
        _emit("saved", g, int(partial is not None))

    def validate(self, epoch):
        _emit("validating", epoch + 1)
        if os.environ.get("RFBENCH_FAULT_SLOW_VALIDATION") == "1":
            time.sleep(1.0)
        out = real_validate(self, epoch)
        _emit("val", epoch + 1)
        return out

    def build_defense(name, args, ctx):
        defense = real_build(name, args, ctx)
        step, end, pending = defense.training_step, defense.on_batch_end, []

        def training_step(model, x, y, pos=None):
            pending[:] = [hashlib.sha1(pos.cpu().numpy().tobytes()).hexdigest()[:12]]
            return step(model, x, y, pos)

        def on_batch_end(y, adv_logits):
            end(y, adv_logits)
            _emit("batch", defense.epoch + 1, pending[0])

        defense.training_step, defense.on_batch_end = training_step, on_batch_end
        return defense

    T.Trainer.maybe_resume, T.Trainer._save_last, T.Trainer._validate = maybe_resume, save_last, validate
    T.build_defense = build_defense


def _install_eval_trace() -> None:
    from rfbench.benchmark.eval import flags as F
    from rfbench.benchmark.eval import harness as H

    real_run, real_seed, real_save = H.run_attacks, H.batch_seed, F.SampleFlags.save
    batch_size = []

    def done_batches(flags) -> str:
        bs = batch_size[0]
        n = -(-len(flags.done) // bs)
        done = [str(b) for b in range(n) if flags.done[b * bs:(b + 1) * bs].all()]
        return ",".join(done) or "-"

    def run_attacks(model, test, attacks, flags, flags_path, *, cfg, device, callback=None, **kw):
        batch_size[:] = [cfg.batch_size]
        _emit("eval-start", done_batches(flags))
        return real_run(model, test, attacks, flags, flags_path, cfg=cfg, device=device, callback=callback, **kw)

    def batch_seed(seed, label, batch, part=None):
        _emit("eval-attack", label, batch)
        return real_seed(seed, label, batch, part)

    def save(self, path):
        done = done_batches(self) if batch_size else "-"
        _emit("eval-saving", done)
        real_save(self, path)
        _emit("eval-saved", done)

    H.run_attacks, H.batch_seed, F.SampleFlags.save = run_attacks, batch_seed, save


def _install_slow_write() -> None:
    import time
    from pathlib import Path

    from rfbench.core.io import atomic, checkpoint

    def slow_write_bytes(path, data: bytes) -> None:
        with atomic.atomic_write(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            _emit("half-written", Path(path).name)
            time.sleep(1.0)
            fh.write(data[len(data) // 2:])

    checkpoint.atomic_write_bytes = slow_write_bytes
    from rfbench.benchmark.eval import flags

    flags.atomic_write_bytes = slow_write_bytes


if _TRACE:
    _install_trainer_trace()
    _install_eval_trace()
    if os.environ.get("RFBENCH_FAULT_SLOW_WRITE") == "1":
        _install_slow_write()
