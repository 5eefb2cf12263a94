"""Recipes are checked before a job starts, with messages that name the step at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.data.recipe import RecipeError, load_recipe, parse_recipe

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipes_load(path):
    recipe = load_recipe(path.read_text())
    assert recipe.steps
    assert parse_recipe(recipe.to_dict()) == recipe  # the canonical form reads back


def test_examples_exist():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("text,message", [
    ("steps: [clean_html]", "step 1: unknown step 'clean_html'; known steps: "
     "collapse_whitespace, exact_dedup, fix_unicode, gopher_quality, gopher_repetition, "
     "html_to_text, language, length, mask_pii, near_dedup, normalize, regex, segment, "
     "stopwords, strip_control, tokenize"),
    ("steps: [lenght]", "step 1: unknown step 'lenght' (did you mean 'length'?); known steps:"),
    ("steps: [segment, {stopwords: {languages: [en]}}, segment]",
     "step 'segment' appears twice"),
    ("steps: [stopwords, segment]", "step 'stopwords' removes words from the 'segment' "
     "step's words: add 'segment' before it"),
    ("steps: [{tokenize: {tokenizer: t}}]\nfields: [tokens]",
     "fields: tokens would clash with the column an annotation step writes"),
    ("steps: [{normalize: {frm: NFC}}]",
     "step 1 (normalize): unknown parameter 'frm' (parameters: form)"),
    ("steps: [{normalize: {form: NFD}}]", "step 1 (normalize): form: Input should be 'NFC' or 'NFKC'"),
    ("steps: [{fix_unicode: {x: 1}}]",
     "step 1 (fix_unicode): unknown parameter 'x' (this step takes no parameters)"),
    ("steps: [exact_dedup, {length: {min_chars: 5}}]",
     "step 2 (length): cleaning and filter steps come before deduplication steps"),
    ("steps: [tokenize]", "step 1 (tokenize): tokenizer: Field required"),
    ("steps: [{near_dedup: {threshold: 1.5}}]", "step 1 (near_dedup): threshold: Input should be less than 1"),
    ("steps: [{near_dedup: {bands: 4}}]", "give both bands and rows, or neither"),
    ("steps: [{near_dedup: {num_perm: 64, bands: 10, rows: 10}}]",
     "bands x rows must be at most num_perm (64)"),
    ("steps: [{regex: {pattern: '(unclosed'}}]", "not a valid regular expression"),
    ("steps: [{language: {keep: [english]}}]", "'english' is not an ISO 639-1 language code"),
    ("steps: [stopwords]", "add 'segment' before it"),
    ("steps: [exact_dedup, exact_dedup]", "step 'exact_dedup' appears twice"),
    ("steps: [{a: 1, b: 2}]", "step 1: write a step as its name"),
    ("steps: {normalize: {}}", "'steps' is a list"),
    ("split: {train: 0.5, test: 0.2}", "train + validation + test must add up to 1"),
    ("shuffle: true", "unknown parameter 'shuffle'"),
    ("- just a list", "a recipe is a mapping"),
    ("steps: [normalize", "recipe: not valid YAML"),
])
def test_bad_recipes_say_what_is_wrong(text, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(text)
    assert message in str(e.value)
