"""Training and evaluation: fine-tuning (full or LoRA) and evaluation of Hugging Face
models as preemptible llmos jobs, reaching llmos only through the job context.

    from llmos.train import parse_train_recipe, run_training, run_evaluation

    recipe = parse_train_recipe(yaml_text)           # RecipeError names the bad field
    result = run_training(ctx, recipe, model_dir, train_rows, validation_rows, output_dir)
    if result.yielded:                                # the kernel wants the resources back
        return                                        # the next attempt resumes
    report = run_evaluation(output_dir, recipe.task, test_rows, recipe)

Importing this package imports neither torch nor transformers; they load on first use.
"""

from llmos.train.run import TrainResult, run_evaluation, run_training
from llmos.train.errors import (
           DataError,
           ModelError,
           RecipeError,
           TrainError,
           TrainingDiverged,
)
from llmos.train.recipe import TrainRecipe, parse_train_recipe

__all__ = ["DataError", "ModelError", "RecipeError", "TrainError", "TrainRecipe",
           "TrainResult", "TrainingDiverged", "parse_train_recipe", "run_evaluation",
           "run_training"]
