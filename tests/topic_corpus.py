"""A small labeled topic corpus for the real-model tests: four clearly different topics,
templated sentences. Training and held-out rows use different templates and different
words, so a classifier must learn the topic, not the sentence."""

from __future__ import annotations

import random

VOCAB = {
    "sports": {
        "train": ["the striker", "the goalkeeper", "the home team", "the coach", "the referee",
                  "the midfielder", "the captain", "the visiting side"],
        "held": ["the sprinter", "the tennis champion", "the rugby squad", "the boxer",
                 "the cyclist"],
        "things": ["the final whistle", "a penalty kick", "the league table", "extra time",
                   "the championship match", "a red card"],
        "held_things": ["the relay race", "the grand slam", "the title fight", "the marathon"],
    },
    "cooking": {
        "train": ["the chef", "the baker", "my grandmother", "the sous-chef", "the pastry cook",
                  "the line cook", "the home cook", "the restaurant owner"],
        "held": ["the caterer", "the food blogger", "the butcher", "the kitchen apprentice",
                 "the barbecue master"],
        "things": ["the tomato sauce", "a loaf of sourdough", "the garlic butter",
                   "the risotto", "a pinch of salt", "the chocolate cake"],
        "held_things": ["the curry paste", "a pot of stew", "the pancake batter",
                        "the roast chicken"],
    },
    "weather": {
        "train": ["the forecaster", "the meteorologist", "the storm chaser",
                  "the weather service", "the radar", "the satellite", "the climate station",
                  "the coast guard"],
        "held": ["the pilot", "the farmer", "the ski patrol", "the harbour master",
                 "the mountain guide"],
        "things": ["heavy rain", "a cold front", "strong winds", "the thunderstorm",
                   "freezing fog", "a heat wave"],
        "held_things": ["the blizzard", "a drizzle", "the hailstorm", "the monsoon"],
    },
    "computing": {
        "train": ["the programmer", "the sysadmin", "the compiler", "the database",
                  "the web server", "the developer", "the operating system", "the laptop"],
        "held": ["the hacker", "the cloud provider", "the software tester", "the router",
                 "the smartphone"],
        "things": ["a memory leak", "the source code", "the kernel update", "a null pointer",
                   "the login page", "the backup script"],
        "held_things": ["the firmware", "a software patch", "the API endpoint",
                        "the encryption key"],
    },
}

TRAIN_TEMPLATES = [
    "{who} talked about {thing} this morning.",
    "Everyone noticed {thing} when {who} arrived.",
    "{who} was worried about {thing}.",
    "According to {who}, {thing} changed everything.",
]
HELD_TEMPLATES = [
    "Yesterday {who} could not stop thinking about {thing}!",
    "Was it {thing} that made {who} so nervous?",
    "Reports say {who} handled {thing} well.",
]


def _rows(split: str, n_per_topic: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    templates = TRAIN_TEMPLATES if split == "train" else HELD_TEMPLATES
    rows = []
    for topic, words in VOCAB.items():
        who = words["train" if split == "train" else "held"]
        things = words["things" if split == "train" else "held_things"]
        for i in range(n_per_topic):
            text = rnd.choice(templates).format(who=rnd.choice(who), thing=rnd.choice(things))
            rows.append({"id": f"{split}-{topic}-{i}", "text": text[0].upper() + text[1:],
                         "label": topic})
    rnd.shuffle(rows)
    return rows


def train_rows() -> list[dict]:
    """152 rows, 38 per topic."""
    return _rows("train", 38, seed=1)


def held_out_rows() -> list[dict]:
    """40 rows, 10 per topic, in other templates with other words."""
    return _rows("held", 10, seed=2)
