"""A small, real byte-level BPE tokenizer for the built-in presets, trained on an embedded corpus.

The presets have no downloadable tokenizer, so one is trained here in well under a second. Byte-level
BPE means every string encodes (no unknown bytes) and decoding round-trips the text exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # the trainer gives them ids 0, 1, 2, 3 in this order
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
MIN_TOKENIZER_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens

# Varied plain English with digits and punctuation, so common words and numbers get their own merges.
CORPUS = """\
The weather today is mild and bright. In the morning the temperature was 12 degrees Celsius, and by
noon it had climbed to 21 degrees. A light wind came from the west at 15 km/h. Tomorrow the forecast
says clouds will gather after 3 p.m., with a 60% chance of rain in the evening. On Friday, expect
snow in the hills above 1,200 metres; the valleys should stay dry. Rain, wind, sun and snow: every
season has its own weather, and every town has its own way of talking about it.

Spring arrives slowly in the north. The days grow longer, the rivers swell with melted snow, and the
first green leaves appear on the birch trees. Summer is short but warm; people swim in the lakes
until late at night, when the sky is still light. Autumn brings storms from the sea, and winter is
long, dark and cold, with temperatures that can fall to -30 degrees.

To bake a simple loaf of bread, you need 500 grams of flour, 350 ml of warm water, 7 grams of dry
yeast and 10 grams of salt. Mix the flour and the salt in a large bowl. Dissolve the yeast in the
water, pour it into the flour, and stir until a rough dough forms. Knead the dough for 10 minutes,
until it is smooth and elastic. Cover the bowl and let it rise for 1 hour, or until it has doubled
in size. Shape the loaf, place it on a tray, and bake it at 220 degrees for 30 to 35 minutes.

For a quick tomato soup, fry one chopped onion and two cloves of garlic in olive oil. Add 800 grams
of tomatoes, a pinch of sugar, salt and pepper, and 400 ml of stock. Simmer for 20 minutes, then
blend until smooth. Serve it hot with fresh bread, a spoon of cream, and a few leaves of basil.

Numbers are everywhere. One, two, three, four, five, six, seven, eight, nine, ten. The sum of 2 and
3 is 5; 7 times 8 is 56; 100 divided by 4 is 25. A dozen is 12, a score is 20, and a gross is 144.
The year 2024 had 366 days because it was a leap year. Pi is about 3.14159, and the square root of
2 is about 1.41421. In binary, the number 10 is written 1010; in hexadecimal it is 0xA. Counting
from 0 to 99 takes a hundred steps: 0, 1, 2, 3, ..., 97, 98, 99.

Once upon a time, in a small village by the sea, there lived an old fisherman named Tom. Every
morning he rowed his boat out past the rocks, cast his net, and waited. One day the net came up
heavy, and inside it was not a fish but a small wooden box. "What could this be?" he asked. He
opened it carefully. Inside was a map, a brass key, and a note that said: "Follow the gulls."

Tom laughed, but the next morning he watched the gulls. They flew north, past the lighthouse, to an
island he had never visited. He rowed for three hours. On the island he found a door in the cliff,
and the brass key fit the lock! Behind the door was a room full of books, maps and old tools. "This
is better than gold," Tom said, and he spent the rest of his life reading, writing and teaching the
children of the village everything he learned.

Questions, answers, and lists help us think. Who? What? Where? When? Why? How? First, read the
question. Second, write down what you know. Third, check your answer twice. It's simple, isn't it?
Yes, it is; but it's also easy to forget. Remember: small steps, done well, add up to big results.

Hello, world! Hello again, friends. Good morning, good afternoon, and good night. Thank you, please,
sorry, and welcome. The quick brown fox jumps over the lazy dog. She sells sea shells by the sea
shore. A stitch in time saves nine. Time flies like an arrow; fruit flies like a banana.

A train leaves the station at 08:45 and travels at 120 km/h. Another train leaves at 09:15 on the
same line at 150 km/h. At what time does the second train catch up with the first? The first train
has a 30-minute head start, so it is 60 km ahead. The second train gains 30 km every hour, so it
catches up after 2 hours, at 11:15. Check: 120 x 2.5 = 300 and 150 x 2 = 300. Both trains are 300 km
from the station.
"""


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer with at most ``vocab_size`` tokens (fewer if the corpus runs out of merges)."""
    if vocab_size < MIN_TOKENIZER_VOCAB:
        raise ValueError(f"tokenizer vocab_size: expected at least {MIN_TOKENIZER_VOCAB} (bytes + special tokens), got {vocab_size}")
    # No thread pinning needed: the trainer breaks ties between equally frequent merges by pair, so
    # the output is byte-identical with 1 or 16 threads (checked; tests/models/test_presets.py keeps it so).
    tok = Tokenizer(models.BPE())
    # No prefix space: "Hello" must decode back to "Hello", not " Hello".
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n\n"), trainer)
    for token, want in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
        got = tok.token_to_id(token)
        if got != want:  # the ids are written into config.json: fail loudly if the library ever changes
            raise RuntimeError(f"tokenizer: {token} expected id {want}, got {got}")
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path, model_max_length: int) -> None:
    """Write tokenizer.json plus the two small files ``transformers.AutoTokenizer`` reads beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # would change decoded text ("a ." -> "a.")
        "add_prefix_space": False,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", special)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
