"""The built-in text every family's tiny tokenizer is trained on (a few milliseconds of BPE training): enough
distinct words that VQA-style prompts become whole-word tokens."""

from __future__ import annotations

_COLOURS = "red green blue yellow orange purple pink brown black white grey cyan".split()
_SHAPES = "square circle triangle rectangle star diamond hexagon oval cross heart line dot".split()
_OBJECTS = (
    "cat dog bird car bus truck bike boat plane train person man woman child tree flower house door window table "
    "chair cup bottle book phone clock ball box bag sign road sky water grass cloud sun moon"
).split()
_PLACES = "left right top bottom middle centre center corner edge front back above below near far inside".split()
_WORDS = """
a about after again all also always an and another any are around as ask at away back bad be because been before
being best better big both but by call can cannot case change clear close colour color come could count day did
different do does done down draw each early easy empty end enough even every example eye face fact few find first
five follow for four from full get give go good great group half hand has have he her here high his hold how i if
image in into is it its just keep kind know large last late least leave less let light like little long look low
make many may me mean might more most move much must my name never new next nine no not nothing now number of off
often old on once one only open or other our out over own page part people picture place point position put quite
read real region same say see seven shape short show side six size small so some something still such sure take
ten than that the their them then there these they thing think this those three through time to together too two
under until up upon us use very view visible want was way we well were what when which while who whole why will
with without word work would write yes yet you your zero system user assistant
""".split()
_PROSE = """
You are a helpful assistant. Look at the picture and answer the question. The image shows a scene with several
objects. Describe what you see, then give a short answer. Think step by step before you answer, and keep the final
answer brief. If the text in the image is small, read it carefully. A chart has a title, an axis, labels and numbers;
the largest bar is the highest value. Is there a word written on the sign? Yes, it says stop. No, there is nothing
there. Which one is bigger, the first or the second? The answer is the second one. Please reason about the region
that matters and ignore the background. This is a document with a table, a date, a price and a total amount.
"""


def tiny_corpus():
    """Yield the deterministic training lines of the tiny BPE (~1k lines)."""
    yield from _PROSE.strip().splitlines()
    yield from ("system", "user", "assistant")  # role names start a line in the chat template
    for i, colour in enumerate(_COLOURS):
        for j, shape in enumerate(_SHAPES):
            place = _PLACES[(i + j) % len(_PLACES)]
            obj = _OBJECTS[(7 * i + j) % len(_OBJECTS)]
            yield f"What colour is the {shape}? Answer with one word. {colour.capitalize()}."
            yield f"There is a {colour} {shape} at the {place} of the image, next to a {obj}. How many {shape}s? {i + j}"
            yield f"Where is the {colour} {obj}? It is {place} the {shape}. Answer: {place}"
    for start in range(0, len(_WORDS), 6):
        chunk = _WORDS[start : start + 6]
        yield " ".join(chunk) + ". " + " ".join(word.capitalize() for word in chunk) + "?"
    for n in range(0, 1000, 7):
        yield f"{n} + {n % 13} = {n + n % 13}; the count is {n % 10}, the year {1900 + n % 125}, {n / 8:.2f} percent"
