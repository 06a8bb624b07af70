"""AtomicDumpResults: mmengine's ``DumpResults`` written through a temp file and a rename."""
from __future__ import annotations

from mmengine.evaluator import DumpResults
from mmengine.logging import print_log

from rotplugin.io import write_pickle_atomic
from rotplugin.registry import METRICS

__all__ = ["AtomicDumpResults"]


@METRICS.register_module()
class AtomicDumpResults(DumpResults):
    """``DumpResults`` (``--out results.pkl`` of tools/test.py) that never leaves a partial pickle: the results are
    written to a temp file beside ``out_file_path`` and renamed onto it (an interrupted run keeps the previous file
    or none). In distributed runs, rank 0 writes the results gathered from all processes, each sample once."""

    def compute_metrics(self, results: list) -> dict:
        write_pickle_atomic(self.out_file_path, results)
        print_log(f"Results have been saved to {self.out_file_path}.", logger="current")
        return {}
