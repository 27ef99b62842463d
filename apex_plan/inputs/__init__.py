"""Turn command-line options into specs, one module per concept: `cluster` (GPUs, nodes, price
groups, operating points), `plan` (parallel layouts, disaggregated pools), `workload` (traces,
synthetic draws, sessions), `engine` (engine settings and search's sweep lists), `lists`
(comma-separated values). The names are re-exported here (`from apex_plan import inputs as I`)."""

from __future__ import annotations

from apex_plan.inputs.cluster import (check_search_cluster, cluster_from_options, fleet_from_options,  # noqa: F401
                                      operating_points)
from apex_plan.inputs.engine import (check_engine, check_engine_gpu, chunked_prefill_modes, engine_from_options, engine_sweep,  # noqa: F401
                                     prefix_caching_mode, prefix_caching_modes, speculative_list, speculative_option)
from apex_plan.inputs.lists import csv_list, int_list  # noqa: F401
from apex_plan.inputs.plan import check_plan_fits, default_weight_dtype, parse_disagg_plan, parse_plan  # noqa: F401
from apex_plan.inputs.workload import (WorkloadOptions, check_workload_fits, parse_length, session_options,  # noqa: F401
                                       trace_rate, workload_from_options)
