"""Training recipes: what a fine-tuning job does, as YAML, checked before the job starts.

    task: sequence_classification     # or token_classification, causal_lm
    text_field: text
    label_field: label
    max_length: 128
    method: full                      # or lora, with lora: {r: 8, alpha: 16}
    optimizer: {name: adamw, lr: 5.0e-5, weight_decay: 0.01}
    schedule: {name: linear, warmup_ratio: 0.1}
    batch_size: 16
    epochs: 3
    eval_every: 50
    early_stopping: {patience: 3, metric: eval_f1_macro}

Data fields depend on the task: ``text_field`` + ``label_field`` (sequence
classification); ``tokens_field`` + ``tags_field`` (token classification: a list of words
and a list of BIO tags per row); for ``causal_lm`` exactly one of ``messages_field``
(chat, loss on assistant turns), ``prompt_field`` + ``completion_field`` (loss on the
completion) or ``text_field`` (plain text). This module only describes and checks
recipes; it imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmos.errors import InvalidRequest
from llmos.schema import load_yaml
from llmos.train.errors import RecipeError

TASKS = ("sequence_classification", "token_classification", "causal_lm")

# Validation metrics each task reports (what ``early_stopping.metric`` may name).
TASK_METRICS = {
    "sequence_classification": ("eval_loss", "eval_accuracy", "eval_f1_macro", "eval_f1_micro",
                                "eval_precision_macro", "eval_recall_macro",
                                "eval_precision_micro", "eval_recall_micro"),
    "token_classification": ("eval_loss", "eval_precision", "eval_recall", "eval_f1",
                             "eval_accuracy"),
    "causal_lm": ("eval_loss", "eval_perplexity"),
}
DEFAULT_EPOCHS = 3
_LOWER_IS_BETTER = ("eval_loss", "eval_perplexity")

# Which data fields each task reads (the rest must stay unset).
_TASK_FIELDS = {
    "sequence_classification": {"text_field", "label_field"},
    "token_classification": {"tokens_field", "tags_field"},
    "causal_lm": {"text_field", "messages_field", "prompt_field", "completion_field"},
}
_DATA_FIELDS = {"text_field", "label_field", "tokens_field", "tags_field", "messages_field",
                "prompt_field", "completion_field"}


class StrictSpec(BaseModel):
    """A recipe block: unknown fields refused; `optimizer: sgd` is short for {name: sgd}."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        # ``optimizer: sgd`` is short for ``optimizer: {name: sgd}``
        if isinstance(raw, str) and "name" in cls.model_fields:
            return {"name": raw}
        return raw


class LoraSpec(StrictSpec):
    """LoRA adapters (peft). ``target_modules`` defaults to peft's choice for the
    architecture (BERT: query, value; Llama: q_proj, v_proj); ``all-linear`` adapts every
    linear layer but the output head."""

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None


class OptimizerSpec(StrictSpec):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(5e-5, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _fits_name(self) -> OptimizerSpec:
        if self.name == "sgd" and self.betas != (0.9, 0.999):
            raise ValueError("betas apply to adamw; sgd takes momentum")
        if self.name == "adamw" and self.momentum != 0:
            raise ValueError("momentum applies to sgd; adamw takes betas")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas are two numbers in [0, 1)")
        return self


class ScheduleSpec(StrictSpec):
    """Learning-rate schedule after an optional linear warmup (steps or a ratio of all
    optimizer steps)."""

    name: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_warmup(self) -> ScheduleSpec:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        return self

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return round((self.warmup_ratio or 0.0) * total_steps)


class EarlyStopping(StrictSpec):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    evaluations in a row. ``mode`` defaults to min for loss and perplexity, max otherwise."""

    patience: int = Field(3, ge=1)
    metric: str = "eval_loss"
    mode: Literal["min", "max"] | None = None
    min_delta: float = Field(0.0, ge=0)


class TrainRecipe(StrictSpec):
    task: Literal["sequence_classification", "token_classification", "causal_lm"]
    text_field: str | None = None
    label_field: str | None = None
    tokens_field: str | None = None
    tags_field: str | None = None
    messages_field: str | None = None
    prompt_field: str | None = None
    completion_field: str | None = None
    max_length: int = Field(256, ge=8, le=131072)
    labels: list[str] | None = Field(None, min_length=2)
    method: Literal["full", "lora"] = "full"
    lora: LoraSpec | None = None
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    batch_size: int = Field(8, ge=1, le=65536)
    eval_batch_size: int | None = Field(None, ge=1, le=65536)
    grad_accum_steps: int = Field(1, ge=1, le=4096)
    epochs: int | None = Field(None, ge=1, le=10000)  # default: 3, unless max_steps is set
    max_steps: int | None = Field(None, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = Field(0, ge=0, lt=2**32)
    eval_every: int | None = Field(None, ge=1)
    early_stopping: EarlyStopping | None = None
    checkpoint_every: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    export_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _consistent(self) -> TrainRecipe:
        wrong = {f for f in _DATA_FIELDS - _TASK_FIELDS[self.task] if getattr(self, f)}
        if wrong:
            raise ValueError(f"{', '.join(sorted(wrong))} does not apply to task {self.task!r}"
                             f" (its fields: {', '.join(sorted(_TASK_FIELDS[self.task]))})")
        self._default_fields()
        if self.method == "full" and self.lora is not None:
            raise ValueError("lora settings are given but method is 'full'; set method: lora")
        if self.method == "lora" and self.lora is None:
            self.lora = LoraSpec()
        if self.labels is not None:
            if self.task == "causal_lm":
                raise ValueError("labels apply to classification tasks, not causal_lm")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels: each label appears once")
        if self.early_stopping is not None:
            self._check_early_stopping(self.early_stopping)
        return self

    def _default_fields(self) -> None:
        if self.task == "sequence_classification":
            self.text_field = self.text_field or "text"
            self.label_field = self.label_field or "label"
        elif self.task == "token_classification":
            self.tokens_field = self.tokens_field or "tokens"
            self.tags_field = self.tags_field or "tags"
        else:
            if (self.prompt_field is None) != (self.completion_field is None):
                raise ValueError("prompt_field and completion_field go together")
            formats = [f for f in ("text_field", "messages_field", "prompt_field")
                       if getattr(self, f)]
            if len(formats) > 1:
                raise ValueError("causal_lm reads one format: messages_field, or prompt_field"
                                 " + completion_field, or text_field")
            if not formats:
                self.text_field = "text"

    def _check_early_stopping(self, es: EarlyStopping) -> None:
        if self.eval_every is None:
            raise ValueError("early_stopping needs eval_every (how often to evaluate)")
        name = es.metric if es.metric.startswith("eval_") else f"eval_{es.metric}"
        if name not in TASK_METRICS[self.task]:
            raise ValueError(f"early_stopping.metric: {es.metric!r} is not a metric of "
                             f"{self.task} (metrics: {', '.join(TASK_METRICS[self.task])})")
        es.metric = name
        if es.mode is None:
            es.mode = "min" if name in _LOWER_IS_BETTER else "max"

    @property
    def causal_format(self) -> str | None:
        """``messages``, ``prompt_completion`` or ``text`` for causal_lm, else None."""
        if self.task != "causal_lm":
            return None
        if self.messages_field:
            return "messages"
        return "prompt_completion" if self.prompt_field else "text"

    def total_steps(self, n_rows: int) -> int:
        """Optimizer steps for ``n_rows`` training rows: ``max_steps`` when only it is set,
        the smaller of it and ``epochs`` worth when both are, else ``epochs`` worth."""
        per_epoch = self.steps_per_epoch(n_rows)
        if self.max_steps is None:
            return (self.epochs or DEFAULT_EPOCHS) * per_epoch
        if self.epochs is not None:
            return min(self.max_steps, self.epochs * per_epoch)
        return self.max_steps

    def steps_per_epoch(self, n_rows: int) -> int:
        micro = -(-n_rows // self.batch_size)
        return -(-micro // self.grad_accum_steps)

    def to_dict(self) -> dict:
        """The recipe with every field spelled out; ``parse_train_recipe`` accepts it back."""
        return self.model_dump(mode="json")


def parse_train_recipe(raw: dict | str | TrainRecipe) -> TrainRecipe:
    """Check a recipe given as a mapping or as YAML (or JSON) text; raise RecipeError
    naming the field at fault."""
    if isinstance(raw, TrainRecipe):
        return raw
    if isinstance(raw, str):
        raw = _load_yaml(raw)
    if not isinstance(raw, dict):
        raise RecipeError("a training recipe is a mapping with at least 'task' "
                          f"({' | '.join(TASKS)})")
    try:
        return TrainRecipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_explain(e)) from None


def _load_yaml(text: str) -> Any:
    try:
        return load_yaml(text, "training recipe")
    except InvalidRequest as e:
        raise RecipeError(str(e)) from None


_NESTED = {"lora": LoraSpec, "optimizer": OptimizerSpec, "schedule": ScheduleSpec,
           "early_stopping": EarlyStopping}


def _explain(e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-after",
                                                                     "function-before"))]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            owner = _NESTED.get(loc[0], TrainRecipe) if len(loc) > 1 else TrainRecipe
            problems.append(f"unknown field {where!r} (fields: {', '.join(owner.model_fields)})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
    return "training recipe: " + "; ".join(problems)
