"""The composition root's one import point: the commands' library functions, re-exported.

The work is split by job; this facade keeps `from ui.workflows import ...` working for the
tests, benchmarks and older callers. New code may import from the modules themselves:

- `ui.build_flow`: `BuildConfig` and the build steps, `add`, `remove`, `train`;
- `ui.queries`: `QueryContext`, one photo's answer, `classify_images`, the gate's verdicts;
- `embed.inputs`: the photos a command was given (`resolve_inputs`, re-exported);
- `ui.remove_flow`: `remove --from-file` with the audit's CSV (`remove_listed`);
- `ui.verify`: `verify_bundle`;
- `ui.gate_evaluation`: `evaluate --not-dogs/--unknown-breeds`;
- `ui.finetune_flow`: `build-index --fine-tune`.

Everything in `ui` sits above `classify` and `index`, which build on `embed`; nothing points up
(the import contracts in pyproject.toml keep it so).
"""

from __future__ import annotations

from embed.inputs import resolve_inputs
from ui.build_flow import (
    DEFAULT_OUT,
    HEADS,
    BuildConfig,
    BuildResult,
    add_to_bundle,
    build_bundle,
    build_engine,
    fit_default_head,
    index_bundle,
    matching_positions,
    open_build_embedder,
    open_build_source,
    refresh_after_change,
    remove_from_bundle,
    source_root,
    train_head,
)
from ui.finetune_flow import (
    HELD_OUT_FRACTION,
    FinetunedBuild,
    answer_figures,
    build_finetuned,
)
from ui.gate_evaluation import GateEvaluation, evaluate_gate
from ui.queries import (
    ImageAnswer,
    QueryContext,
    answer_query,
    classify_folder,
    classify_images,
    gate_verdicts,
    look_up_image,
    open_for_queries,
)
from ui.remove_flow import Removal, remove_listed
from ui.verify import VerifyReport, verify_bundle

__all__ = [
    "DEFAULT_OUT", "HEADS", "BuildConfig", "BuildResult", "FinetunedBuild", "GateEvaluation",
    "HELD_OUT_FRACTION", "ImageAnswer", "answer_figures", "build_finetuned",
    "QueryContext", "Removal", "VerifyReport", "add_to_bundle", "answer_query", "build_bundle",
    "build_engine", "classify_folder", "classify_images", "evaluate_gate", "fit_default_head",
    "gate_verdicts", "index_bundle", "look_up_image", "matching_positions",
    "open_build_embedder", "open_build_source", "open_for_queries", "refresh_after_change",
    "remove_from_bundle", "remove_listed", "resolve_inputs", "source_root", "train_head",
    "verify_bundle",
]
