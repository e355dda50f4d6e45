"""A torch-profiler trace of the engine's steps, started and stopped while it serves.

`POST /start_profile` (optionally `{"num_steps": N}`) starts torch.profiler on the engine process
(CPU activity, and the device's kernels where the platform has a profiler); the trace stops after
N steps, or at `POST /stop_profile`, and is written as a gzipped Chrome trace (open it in
https://ui.perfetto.dev or chrome://tracing) under the server's profile directory
(`--profile-dir`, default $TESSERA_PROFILE_DIR or /tmp/tessera-profiles). Requests cannot choose
where files go. Every step is a `record_function` range (`engine_step`) holding ranges for its
parts: `schedule`, the forward named by its batch (`forward extend reqs=12 tokens=2048`),
`sample` (holding `sampling info`, `grammar mask` and `sampler`) and `process` (reading the step
before), so the trace shows where a workload's step time goes (host scheduling, prefill kernels,
decode attention, sampling, grammar masks).
`scripts/gpu/trace_summary.py` prints a trace's totals per range and per kernel.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_PROFILE_DIR = "/tmp/tessera-profiles"
MAX_STEPS = 10_000


def profile_dir(configured: str | None) -> str:
    return configured or os.environ.get("TESSERA_PROFILE_DIR") or DEFAULT_PROFILE_DIR


class StepProfiler:
    def __init__(self, output_dir: str, device_type: str) -> None:
        self.output_dir = output_dir
        self.device_type = device_type
        self.profiler: Any = None
        self.steps_left: int | None = None
        self.last_trace: str | None = None
        self.traces_written = 0

    @property
    def active(self) -> bool:
        return self.profiler is not None

    def start(self, num_steps: int | None = None) -> dict[str, Any]:
        """Start tracing (for `num_steps` steps, else until stop()). Refused while running."""
        if self.active:
            return {"success": False, "message": "a profile is already running"}
        if num_steps is not None and not 1 <= num_steps <= MAX_STEPS:
            return {"success": False, "message": f"num_steps must be in [1, {MAX_STEPS}]"}
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device_type == "cuda" and torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=False,
                                               with_stack=False)
        self.profiler.start()
        self.steps_left = num_steps
        logger.info("profiling started (%s, %s)", "+".join(a.name for a in activities),
                    f"{num_steps} steps" if num_steps else "until /stop_profile")
        return {"success": True, "message": "profiling started"}

    def step_done(self) -> None:
        """After each engine step: count it, and stop when the requested steps are traced."""
        if self.steps_left is None:
            return
        self.steps_left -= 1
        if self.steps_left <= 0:
            self.stop()

    def stop(self) -> dict[str, Any]:
        """Stop and write the trace; its path is in the answer ("trace")."""
        if not self.active:
            if self.last_trace is not None:
                return {"success": True, "message": "the profile already stopped",
                        "trace": self.last_trace}
            return {"success": False, "message": "no profile is running"}
        profiler, self.profiler, self.steps_left = self.profiler, None, None
        profiler.stop()
        os.makedirs(self.output_dir, exist_ok=True)
        self.traces_written += 1  # two traces within a second keep apart
        name = (f"tessera-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-"
                f"{self.traces_written}.trace.json")
        path = os.path.join(self.output_dir, name)
        profiler.export_chrome_trace(path)
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(path)
        self.last_trace = path + ".gz"
        logger.info("profile written to %s", self.last_trace)
        return {"success": True, "message": "profile written", "trace": self.last_trace}
