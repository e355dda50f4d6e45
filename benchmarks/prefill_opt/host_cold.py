"""Experiment (session 11): is the device host's "cold call" cost a CPU idle-state effect?
Median host us of one CPU torch.empty after: back to back (warm), a 2 ms sleep, a 2 ms busy spin,
a 2 ms GPU sleep waited by torch.cuda.synchronize, and the same GPU sleep polled with event.query.
Also the host's CPU facts (governor, idle states, hypervisor flag).

    python benchmarks/prefill_opt/host_cold.py OUT.json

Session 11 (benchmarks/results/2026-11-24_h200_s11_host_cold.json): 2.1 us warm, 19.8 after a
sleep, 16.7 after a Python busy spin, 3.1 after a GPU wait (synchronize or polling): not a CPU
idle state (a spinning host is cold too), but which code ran last (torch's own paths stay warm
through a synchronize). The VM exposes no cpufreq or cpuidle controls."""
import json
import os
import statistics
import sys
import time

import torch


def med(fn, n: int = 60) -> float:
    return round(statistics.median(fn() for _ in range(n)), 2)


def call() -> float:
    """Host us of one small CPU allocation."""
    start = time.perf_counter()
    torch.empty(35, dtype=torch.int64)
    return (time.perf_counter() - start) * 1e6


def after(prep):
    def fn() -> float:
        prep()
        return call()
    return fn


def spin(seconds: float = 0.002) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def gpu_sync() -> None:
    torch.cuda._sleep(2_000_000)  # ~2 ms of GPU cycles
    torch.cuda.synchronize()


def gpu_poll() -> None:
    torch.cuda._sleep(2_000_000)
    done = torch.cuda.Event()
    done.record()
    while not done.query():
        pass


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"<{e.__class__.__name__}>"


def main():
    cpu0 = "/sys/devices/system/cpu/cpu0"
    cpuinfo = read("/proc/cpuinfo")
    res = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
           "governor": read(f"{cpu0}/cpufreq/scaling_governor"),
           "cpuidle": [(read(f"{cpu0}/cpuidle/state{i}/name"),
                        read(f"{cpu0}/cpuidle/state{i}/latency"))
                       for i in range(6) if os.path.exists(f"{cpu0}/cpuidle/state{i}")],
           "cpu_model": [line for line in cpuinfo.splitlines()
                         if line.startswith("model name")][:1],
           "hypervisor": "hypervisor" in cpuinfo}
    torch.cuda.init()
    torch.empty(1, device="cuda")
    res["us"] = {"warm": med(call), "sleep_2ms": med(after(lambda: time.sleep(0.002))),
                 "spin_2ms": med(after(spin)), "gpu_sync_2ms": med(after(gpu_sync)),
                 "gpu_poll_2ms": med(after(gpu_poll))}
    print(json.dumps(res))
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
