"""Knowledge distillation: a smaller student, made from the teacher's own layers, learns
to answer like its teacher.

``make_student`` builds the student: the teacher's architecture with fewer layers, each
copied from an evenly spaced teacher layer (first and last included), embeddings and task
head copied too. ``distill`` trains it with llmos's training loop (``llmos.train.loop``:
checkpoints, yield and resume, live metrics come with it) on the loss

    alpha * CE(student, label) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))

with the teacher frozen (eval mode, no gradients), then exports the student alone
(``llmos.train.export.export_model``).

Owns: the student's construction, the distillation loss and its wiring. Does not own: the
loop, encoding, evaluation (``llmos.train``), jobs and registration (``optimize.program``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llmos.optimize import folders
from llmos.optimize.folders import CompressError, ProgressFn, report


def student_layers(teacher_layers: int, layers: int) -> list[int]:
    """The teacher layers the student's are copied from: evenly spaced, first and last
    included (6 -> 3: [0, 2, 5]); one layer takes the last."""
    if layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (layers - 1)
    return [int(i * step + 0.5) for i in range(layers)]


def _layer_list(model, count: int) -> str:
    """The qualified name of the model's list of transformer layers."""
    import torch

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == count and name:
            return name
    raise CompressError(f"cannot find the {count} transformer layers of "
                        f"{type(model).__name__}")


def make_student(teacher_dir: str | Path, dst: str | Path, layers: int,
                 progress: ProgressFn | None = None) -> dict:
    """Write the student of the teacher in ``teacher_dir`` to ``dst`` (absent or empty):
    the same model with ``layers`` layers copied from the teacher's."""
    src, out = folders.check_src(teacher_dir), folders.check_dst(dst)
    report(progress, 0, 3, "loading")
    teacher, tokenizer = folders.load_float(src)
    total = getattr(teacher.config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise CompressError(f"the config of {src.name!r} has no num_hidden_layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < total:
        raise CompressError(f"distill.student_layers: {layers!r} must be a whole number "
                            f"from 1 to {total - 1} (the teacher has {total} layers)")
    report(progress, 1, 3, "copying layers")
    picked = student_layers(total, layers)
    student = _student(teacher, picked)
    report(progress, 2, 3, "writing")
    folders.write_float(student, tokenizer, src, out)
    report(progress, 3, 3, "done")
    return folders.plain({"method": "distill", "teacher_layers": total,
                          "student_layers": layers, "copied_from": picked,
                          "parameters_before": folders.parameters(teacher),
                          "parameters_after": folders.parameters(student),
                          "bytes_before": folders.weight_bytes(src),
                          "bytes_after": folders.weight_bytes(out)})


def _student(teacher, picked: list[int]):
    import copy

    total = teacher.config.num_hidden_layers
    prefix = _layer_list(teacher, total)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(picked)
    kinds = getattr(config, "layer_types", None)
    if isinstance(kinds, list) and len(kinds) == total:
        config.layer_types = [kinds[i] for i in picked]
    student = type(teacher)(config)
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            if int(index) not in picked:
                continue
            key = f"{prefix}.{picked.index(int(index))}.{rest}"
        state[key] = value
    result = student.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        bad = result.missing_keys[:3] + result.unexpected_keys[:3]
        raise CompressError(f"the student does not take the teacher's weights "
                            f"({', '.join(bad)})")
    return student.eval()


def _setting(settings: Any, name: str, default: float) -> float:
    if settings is None:
        return default
    value = settings.get(name, default) if isinstance(settings, dict) \
        else getattr(settings, name, default)
    return float(value)


def distill(ctx, teacher_dir: str | Path, student_dir: str | Path, recipe, settings,
            train_rows, val_rows, out_dir: str | Path, *, device: str | None = None) -> dict:
    """Train the student in ``student_dir`` (see ``make_student``) to imitate the teacher
    in ``teacher_dir`` on ``train_rows`` (``recipe``: a TrainRecipe for the student's
    training; ``settings``: ``temperature`` and ``alpha``, a mapping or an object) and
    export it to ``out_dir``. Returns {"yielded", "steps", "total_steps", "metrics",
    "kd_loss_before", "kd_loss_after", "export"}; with ``yielded`` true (and
    ``yielded_at_step``, ``of``) nothing is exported and the next attempt resumes from the
    job's checkpoint."""
    from llmos.optimize.distill_train import run_distillation

    temperature = _setting(settings, "temperature", 2.0)
    alpha = _setting(settings, "alpha", 0.5)
    if not temperature > 0:
        raise CompressError(f"distill.temperature: {temperature} must be above 0")
    if not 0 <= alpha <= 1:
        raise CompressError(f"distill.alpha: {alpha} must be within [0, 1]")
    return run_distillation(ctx, Path(teacher_dir), Path(student_dir), recipe, temperature,
                            alpha, train_rows, val_rows, Path(out_dir), device=device)


def teacher_fingerprint(teacher_dir: Path, temperature: float, alpha: float) -> str:
    h = hashlib.sha256(json.dumps([temperature, alpha]).encode())
    h.update((teacher_dir / "config.json").read_bytes())
    for f in sorted(teacher_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]
