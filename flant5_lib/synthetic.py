"""Deterministic SAMSum-shaped messenger dialogues, so every step can run offline.

Each dialogue follows one scenario (plans, favours, news, errands, running late, lost things...) among
2-4 speakers, padded with small talk to 3-30 turns. The reference summary is written in the third person
from the scenario's facts, so its content follows from the dialogue and a small model can learn it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = [
    "Amanda", "Jerry", "Hannah", "Larry", "Eric", "Rob", "Lenny", "Bob", "Tina", "Steve", "Olivia", "Mark",
    "Sophie", "Adam", "Julia", "Tom", "Kate", "Peter", "Emma", "Jack", "Mia", "Nick", "Laura", "Paul",
    "Zoe", "Chris", "Anna", "Dan", "Ella", "Sam", "Lucy", "Ben", "Grace", "Matt", "Nina", "Oscar",
]
PLACES = ["the cinema", "the park", "Luigi's", "the gym", "the station", "the library", "the pub", "the mall",
          "the beach", "the office", "the museum", "the cafe on Main Street"]
TIMES = ["5 pm", "6 pm", "7 pm", "8 pm", "noon", "10 am", "9 pm", "half past six", "4 pm", "11 am"]
DAYS = ["today", "tomorrow", "on Friday", "on Saturday", "on Sunday", "on Monday", "next week", "tonight"]
ITEMS = ["charger", "umbrella", "drill", "laptop", "camera", "bike", "tent", "car", "guitar", "blender", "ladder"]
GROCERIES = ["milk", "bread", "eggs", "apples", "coffee", "cheese", "rice", "tomatoes", "butter", "pasta", "bananas"]
SHOPS = ["Tesco", "the corner shop", "Lidl", "the bakery", "the market", "Aldi"]
NEWS = [
    ("got a new job at {org}", "I got the job at {org}!", ["Google", "the hospital", "a bank", "the city council", "a startup"]),
    ("passed the driving test", "I passed my driving test!", [""]),
    ("is moving to {org}", "I'm moving to {org} next month", ["Berlin", "London", "Warsaw", "Paris", "Madrid"]),
    ("adopted a {org}", "We adopted a {org}!", ["puppy", "kitten", "rabbit", "parrot"]),
    ("got engaged", "Guess what, I got engaged!", [""]),
    ("finished the thesis", "I finally finished my thesis", [""]),
]
LOST = ["keys", "wallet", "phone", "glasses", "headphones", "passport"]
SPOTS = ["in the kitchen", "in the car", "at the office", "under the sofa", "in the bathroom", "at Mark's place"]
FILLER = [
    "Hi!", "Hey", "How are you?", "Fine, thanks", "ok", "haha", "<file_photo>", "<file_gif>", "Cool", "Sure",
    "lol", "Great!", "Really?", "Yes", "Thanks!", "No problem", "See you", "Bye", ":)", "Good to know",
    "I'm at work now", "Talk later", "Sounds good", "Oh nice", "Ok, I'll let you know",
]


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _plans(r: random.Random, who: list[str]) -> tuple[list[tuple[int, str]], str]:
    place, time, day = r.choice(PLACES), r.choice(TIMES), r.choice(DAYS)
    turns = [(0, f"Do you want to go to {place} {day}?"), (1, "Sure, what time?"), (0, f"{time}?")]
    if r.random() < 0.3:
        later = r.choice([t for t in TIMES if t != time])
        turns += [(1, f"{time} is too early for me, can we make it {later}?"), (0, "OK, fine")]
        time = later
    else:
        turns.append((1, "Perfect"))
    for i in range(2, len(who)):
        turns.append((i, f"Can I join? I'd love to go to {place}"))
        turns.append((0, "Of course!"))
    return turns, f"{_join_names(who)} will meet at {place} at {time} {day}."


def _favour(r: random.Random, who: list[str]) -> tuple[list[tuple[int, str]], str]:
    item, day = r.choice(ITEMS), r.choice(DAYS)
    turns = [(0, f"Could you lend me your {item} {day}?"), (1, "What do you need it for?"),
             (0, r.choice(["Mine is broken", "I left mine at home", "I need it for a trip", "Just for a day"]))]
    if r.random() < 0.25:
        turns.append((1, f"Sorry, I need my {item} {day} myself"))
        return turns, f"{who[1]} can't lend {who[0]} the {item} {day}."
    turns.append((1, "Sure, no problem. I'll bring it"))
    return turns, f"{who[1]} will lend {who[0]} the {item} {day}."


def _news(r: random.Random, who: list[str]) -> tuple[list[tuple[int, str]], str]:
    fact, line, orgs = r.choice(NEWS)
    org = r.choice(orgs)
    turns = [(0, line.format(org=org)), (1, r.choice(["Wow, congrats!", "No way! Congratulations!", "That's amazing!"]))]
    for i in range(2, len(who)):
        turns.append((i, "Congrats!!"))
    turns.append((0, "Thanks! Let's celebrate soon"))
    return turns, f"{who[0]} {fact.format(org=org)}."


def _errand(r: random.Random, who: list[str]) -> tuple[list[tuple[int, str]], str]:
    shop = r.choice(SHOPS)
    goods = r.sample(GROCERIES, r.randint(1, 3))
    turns = [(1, f"I'm going to {shop}, do you need anything?"), (0, f"Yes, please buy {_join_names(goods)}"),
             (1, "OK")]
    return turns, f"{who[1]} is going to {shop} and will buy {_join_names(goods)} for {who[0]}."


def _late(r: random.Random, who: list[str]) -> tuple[list[tuple[int, str]], str]:
    minutes, place = r.choice([5, 10, 15, 20, 30, 45]), r.choice(PLACES)
    reason = r.choice(["the bus is late", "there's a traffic jam", "I overslept", "my train was cancelled"])
    turns = [(0, f"I'm running late, {reason}"), (1, "How late?"), (0, f"I'll be at {place} in {minutes} minutes"),
             (1, "No worries, I'll wait")]
    return turns, f"{who[0]} is running late because {reason.replace('I ', who[0] + ' ').replace('my ', 'the ')}. " \
                  f"{who[0]} will be at {place} in {minutes} minutes."


def _lost(r: random.Random, who: list[str]) -> tuple[list[tuple[int, str]], str]:
    thing, spot = r.choice(LOST), r.choice(SPOTS)
    turns = [(0, f"Have you seen my {thing}?"), (1, "No, where did you leave them?"), (0, "No idea, I can't find them")]
    if r.random() < 0.7:
        turns.append((1, f"Wait, they're {spot}!"))
        return turns, f"{who[0]} lost the {thing}. {who[1]} found them {spot}."
    turns.append((1, "Sorry, I haven't seen them"))
    return turns, f"{who[0]} can't find the {thing}."


SCENARIOS: list[Callable[[random.Random, list[str]], tuple[list[tuple[int, str]], str]]] = [
    _plans, _favour, _news, _errand, _late, _lost,
]


def _target_turns(r: random.Random) -> int:
    # Roughly SAMSum's mix: most dialogues 3-12 turns, a tail up to 30.
    bucket = r.choices([(3, 6), (7, 12), (13, 18), (19, 30)], weights=[45, 33, 15, 7])[0]
    return r.randint(*bucket)


def generate_record(r: random.Random, index: int) -> dict[str, str]:
    n_speakers = r.choices([2, 3, 4], weights=[75, 18, 7])[0]
    who = r.sample(NAMES, n_speakers)
    scenario = r.choice(SCENARIOS)
    core, summary = scenario(r, who)
    target = max(_target_turns(r), len(core))
    n_before = r.randint(0, target - len(core))
    before = [(r.randrange(n_speakers), r.choice(FILLER)) for _ in range(n_before)]
    after = [(r.randrange(n_speakers), r.choice(FILLER)) for _ in range(target - len(core) - n_before)]
    lines = [f"{who[i]}: {text}" for i, text in before + core + after]
    return {"id": f"syn-{index:06d}", "dialogue": "\n".join(lines), "summary": summary}


def generate_records(n: int, seed: int = 42) -> list[dict[str, str]]:
    """`n` dialogues; the same (n, seed) always gives the same records."""
    r = random.Random(seed)
    return [generate_record(r, i) for i in range(n)]
