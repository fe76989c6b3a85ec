"""GPU utilisation from NVML (nvidia-ml-py), exported only where a GPU is present: absent, never an error."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from pyserving.observability.metrics import Metrics

log = logging.getLogger("pyserving.gpu")


def add_gpu_metrics(metrics: Metrics) -> bool:
    """Register tensorflow_serving_gpu_utilization{gpu} (and memory) if NVML finds a GPU; True if it did."""
    try:
        import pynvml  # nvidia-ml-py: optional (pip install 'pyserving[gpu]')

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # no package, no driver, or no GPU: nothing to export
        return False
    if count == 0:
        return False
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    utilization = Gauge("tensorflow_serving_gpu_utilization", "GPU utilisation in percent (NVML).", ("gpu",),
                        registry=metrics.registry)
    memory = Gauge("tensorflow_serving_gpu_memory_used_bytes", "GPU memory in use (NVML).", ("gpu",),
                   registry=metrics.registry)

    def refresh() -> None:
        for i, handle in enumerate(handles):
            try:
                utilization.labels(str(i)).set(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                memory.labels(str(i)).set(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            except Exception:
                log.debug("NVML read of GPU %d failed", i, exc_info=True)

    metrics.on_collect(refresh)
    log.info("Exporting utilisation of %d GPU(s) from NVML", count)
    return True
