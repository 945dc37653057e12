"""Make the quick-start dataset: extract a contact (name, email, city) from one sentence as JSON.

Writes examples/data/contacts/{train,eval}.jsonl in the `chat` format. Deterministic (seed 0):
re-running it reproduces the committed files byte for byte.

    python examples/make_quickstart_data.py
"""

import json
import random
from pathlib import Path

FIRST = ["Maria", "James", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Sofia", "Ivan",
         "Chen", "Fatima", "Lucas", "Nora", "Mateo", "Elif", "Kwame", "Hannah", "Yuki", "Rafael"]
LAST = ["Lopez", "Smith", "Tanaka", "Haddad", "Fischer", "Rossi", "Patel", "Walsh", "Novak",
        "Petrov", "Wang", "Diallo", "Martin", "Berg", "Silva", "Kaya", "Mensah", "Cohen", "Sato"]
CITIES = ["Lisbon", "Toronto", "Osaka", "Cairo", "Munich", "Naples", "Pune", "Dublin", "Prague",
          "Kyiv", "Chengdu", "Dakar", "Lyon", "Bergen", "Recife", "Izmir", "Accra", "Haifa"]
DOMAINS = ["example.com", "mail.org", "inbox.net", "post.io"]
TEMPLATES = [
    "Hi, I'm {name} from {city}. You can reach me at {email}.",
    "Please send the invoice to {name} ({email}), our office in {city}.",
    "{name} moved to {city} last year; the new address is {email}.",
    "Contact: {email} -- that's {name}, based in {city}.",
    "Our speaker, {name}, flies in from {city}. Questions go to {email}.",
    "Write to {email} if you want to meet {name} while in {city}.",
]
# In the system turn: it replaces SmolLM2's long default system prompt, keeping rows ~90 tokens.
INSTRUCTION = 'Extract the contact from the message as JSON: {"name": ..., "email": ..., "city": ...}'
OUT = Path(__file__).parent / "data" / "contacts"


def row(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    user = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}"])
    contact = {"name": f"{first} {last}", "email": f"{user.lower()}@{rng.choice(DOMAINS)}", "city": rng.choice(CITIES)}
    return {"messages": [
        {"role": "system", "content": INSTRUCTION},
        {"role": "user", "content": rng.choice(TEMPLATES).format(**contact)},
        {"role": "assistant", "content": json.dumps(contact)},
    ]}


def main(n_train: int = 48, n_eval: int = 20, seed: int = 0) -> None:
    rng = random.Random(seed)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("eval", n_eval)):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row(rng)) + "\n" for _ in range(n))
    print(f"wrote {n_train} train and {n_eval} eval rows to {OUT}")


if __name__ == "__main__":
    main()
