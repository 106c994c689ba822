"""Open questions with a short explanatory answer ("Why is the sky blue?", "How do I boil an egg?"): the
kind of request people mostly send a chat model, where a good answer is relevant and informative rather
than a single checkable token. The oracle judges an answer by the key ideas it covers (``keys``: each a
set of interchangeable words; an answer must cover ``need`` of them to count as correct), so a relevant,
fuller answer beats a bare one, and an answer to another question covers none."""
from __future__ import annotations

import random

from .items import Item
from .oracle import explain_coverage
from .splits import split_pool

# (phrasings, full answer, keys). Keys: synonyms separated by "|", matched as word prefixes.
EXPLAIN: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("Why is the sky blue?", "What makes the sky look blue?"),
     "Sunlight is made of many colours, and air molecules scatter short blue wavelengths much more than red "
     "ones. That scattered blue light reaches our eyes from every direction, so the whole sky looks blue.",
     ("scatter", "wavelength|short", "sunlight|light", "molecule|air")),
    (("Why do leaves change colour in autumn?", "What makes leaves turn red and yellow in the fall?"),
     "In autumn trees stop making chlorophyll, the green pigment, as days get shorter. As it breaks down, "
     "yellow and orange pigments that were there all along show through, and some trees make red ones.",
     ("chlorophyll", "pigment", "green", "shorter|daylight|days")),
    (("How does a refrigerator keep food cold?", "How do fridges work?"),
     "A fridge pumps a refrigerant through a loop. The refrigerant evaporates inside, absorbing heat from the "
     "food compartment, and a compressor pushes it to coils at the back where it releases that heat.",
     ("refrigerant", "heat", "compressor", "evaporat|coil")),
    (("What causes the seasons?", "Why do we have summer and winter?"),
     "Earth's axis is tilted about 23 degrees. As Earth orbits the Sun, each hemisphere is tilted toward the "
     "Sun for part of the year, getting more direct sunlight and longer days, which is summer there.",
     ("tilt", "axis", "orbit", "sunlight|direct|longer days")),
    (("How do vaccines work?", "What does a vaccine do in the body?"),
     "A vaccine shows the immune system a harmless piece or weakened form of a germ. The body learns to make "
     "antibodies and memory cells against it, so it can fight off the real infection quickly later.",
     ("immune", "antibod", "memory", "germ|virus|infection")),
    (("How do I boil an egg?", "What's the way to make a hard-boiled egg?"),
     "Put the egg in a pot and cover it with cold water. Bring it to a boil, then simmer for about 9 to 12 "
     "minutes for a hard yolk, and cool it in cold water before peeling.",
     ("water", "boil|simmer", "minutes", "cool|cold|peel")),
    (("What is photosynthesis?", "Explain photosynthesis simply."),
     "Photosynthesis is how plants make food. Using energy from sunlight, they turn carbon dioxide and water "
     "into sugar, and release oxygen as a by-product.",
     ("sunlight|light", "carbon dioxide", "water", "oxygen|sugar|glucose")),
    (("Why do we need sleep?", "What is sleep good for?"),
     "Sleep lets the body and brain recover. During sleep the brain stores memories and clears waste, the "
     "body repairs tissue, and hormones that control mood and appetite are balanced.",
     ("memor", "brain", "repair|recover", "hormone|mood|immune")),
    (("How does a compass work?", "Why does a compass needle point north?"),
     "A compass needle is a small magnet that can turn freely. Earth behaves like a giant magnet, so the "
     "needle lines up with its magnetic field and points toward magnetic north.",
     ("magnet", "field", "earth", "north")),
    (("What is inflation?", "Can you explain inflation in economics?"),
     "Inflation is the general rise in prices over time, which means each unit of money buys less. It is "
     "usually measured as the yearly percentage change in a price index of common goods and services.",
     ("price", "money|purchasing", "rise|increase", "index|percent|yearly")),
    (("How can I improve my focus while studying?", "Any tips to concentrate better when I study?"),
     "Work in short blocks, such as 25 minutes followed by a 5 minute break. Put your phone in another room, "
     "keep one clear goal for each session, and get enough sleep and water.",
     ("break|block|minutes", "phone|distraction|notification", "goal|plan|task", "sleep|water|rest")),
    (("Why does ice float on water?", "How come ice floats?"),
     "When water freezes its molecules lock into a crystal structure that holds them further apart, so ice "
     "is less dense than liquid water. Anything less dense than water floats.",
     ("dense|density", "molecule", "crystal|structure|lattice", "freez|expand")),
    (("What is a black hole?", "Explain what black holes are."),
     "A black hole is a region of space where gravity is so strong that nothing, not even light, can escape. "
     "Many form when a very massive star collapses at the end of its life.",
     ("gravity", "light", "escape", "star|collapse|mass")),
    (("How do I make a cup of tea?", "What's the right way to brew tea?"),
     "Boil fresh water and pour it over a tea bag or loose leaves in a cup. Let it steep for three to five "
     "minutes, remove the tea, and add milk, lemon or sugar if you like.",
     ("boil|hot water", "steep|brew", "minutes", "milk|lemon|sugar|honey")),
    (("What does a CPU do?", "What is the job of a computer's processor?"),
     "The CPU, or central processing unit, carries out the instructions of programs. It fetches instructions "
     "from memory, decodes them and performs calculations and logic, billions of times per second.",
     ("instruction", "program", "memory", "calculat|arithmetic|logic")),
    (("Why is exercise good for you?", "What are the benefits of regular exercise?"),
     "Regular exercise strengthens the heart and muscles, helps control weight and blood pressure, and lowers "
     "the risk of diabetes. It also improves mood and sleep by reducing stress.",
     ("heart", "muscle", "weight|blood pressure|diabetes", "mood|stress|sleep")),
    (("How do airplanes stay in the air?", "What keeps a plane flying?"),
     "An airplane's wings are shaped and angled so that air flowing over them is pushed downward, creating "
     "lift. Engines provide thrust to keep air moving over the wings fast enough to hold the plane up.",
     ("wing", "lift", "thrust|engine", "air|pressure")),
    (("What is the water cycle?", "Describe the water cycle."),
     "The water cycle is how water moves around Earth. The Sun evaporates water from oceans and lakes, the "
     "vapour cools and condenses into clouds, and it falls back as rain or snow that flows to the sea.",
     ("evaporat", "condens|cloud", "rain|precipitation|snow", "ocean|sea|lake|river")),
    (("How can I save money each month?", "What are some ways to save money?"),
     "Track where your money goes for a month and set a budget. Pay yourself first by moving a fixed amount to "
     "savings on payday, cut subscriptions you don't use, and cook at home more often.",
     ("budget|track", "savings|save", "subscription|cut|spend", "cook|groceries|meal")),
    (("What is democracy?", "Explain what a democracy is."),
     "Democracy is a system of government in which power comes from the people. Citizens choose leaders or "
     "decide laws through free and fair elections, with rights such as free speech protected.",
     ("people|citizen", "vote|election", "government", "rights|speech|law")),
    (("Why do we have time zones?", "What is the reason for time zones?"),
     "Because Earth rotates, the Sun is overhead at different places at different times. Time zones split the "
     "world into regions that share a clock time, so noon is roughly when the Sun is highest everywhere.",
     ("rotat|spin", "sun", "region|zone", "noon|clock|hour")),
    (("How do I write a good resume?", "Tips for writing a resume?"),
     "Keep it to one or two pages with clear headings. List your experience with concrete achievements and "
     "numbers, tailor it to each job's requirements, and proofread carefully for mistakes.",
     ("page|short|concise", "experience|achievement", "tailor|job|requirement", "proofread|mistake|error")),
    (("What is an atom?", "Explain what atoms are made of."),
     "An atom is the smallest unit of a chemical element. It has a tiny nucleus of protons and neutrons, "
     "surrounded by electrons that move around it.",
     ("nucleus", "proton", "neutron", "electron")),
    (("Why is the ocean salty?", "How did the sea become salty?"),
     "Rain slowly dissolves minerals from rocks on land, and rivers carry those salts to the ocean. When sea "
     "water evaporates, the salt stays behind, so it has built up over millions of years.",
     ("rock|mineral", "river|rain", "evaporat", "salt|sodium|dissolv")),
    (("How do I take care of a houseplant?", "What does a houseplant need to stay healthy?"),
     "Give it the right amount of light for its type and water it only when the top of the soil feels dry. "
     "Use a pot with drainage holes and feed it with fertilizer during the growing season.",
     ("light|sun", "water", "soil|pot|drainage", "fertiliz|feed|nutrient")),
    (("What is the internet?", "How would you explain the internet?"),
     "The internet is a worldwide network of connected computers. They exchange data using shared rules called "
     "protocols, which lets people send email, browse websites and stream video.",
     ("network", "computer", "protocol|data", "website|email|browse")),
    (("What causes thunder?", "Why does thunder happen?"),
     "Lightning heats the air around it to tens of thousands of degrees in an instant. The air expands so fast "
     "that it creates a shock wave, which we hear as thunder.",
     ("lightning", "heat|hot", "expand", "shock|sound|wave")),
    (("How can I be a better listener?", "What makes someone a good listener?"),
     "Give the speaker your full attention and put your phone away. Let them finish without interrupting, ask "
     "open questions, and repeat back what you heard to check you understood.",
     ("attention|focus", "interrupt", "question", "repeat|summar|understood")),
    (("What is gravity?", "Explain gravity to me."),
     "Gravity is the force by which objects with mass attract each other. It keeps us on the ground, holds the "
     "Moon in orbit around Earth and keeps Earth in orbit around the Sun.",
     ("force", "mass", "attract|pull", "orbit|moon|planet")),
    (("How do I start running as a beginner?", "Any advice for someone who wants to start jogging?"),
     "Start with run-walk intervals, such as one minute running and two minutes walking, three times a week. "
     "Wear comfortable shoes, go at an easy pace where you can talk, and add time gradually.",
     ("walk|interval", "shoe", "pace|easy|slow", "gradual|slowly|week")),
    (("Why do cats purr?", "What does it mean when a cat purrs?"),
     "Cats purr by vibrating muscles in their voice box as they breathe. They usually purr when content, but "
     "also to calm themselves when stressed or hurt, and mother cats purr to guide kittens.",
     ("vibrat|muscle", "content|happy|relax", "calm|stress|heal", "kitten|mother|communicat")),
    (("What is a budget?", "Why should I have a budget?"),
     "A budget is a plan for your money that lists expected income and expenses for a period, like a month. "
     "It helps you spend on what matters, avoid debt and set money aside for savings goals.",
     ("income", "expense|spend", "plan", "debt|saving|goal")),
    (("How are rainbows formed?", "What makes a rainbow?"),
     "A rainbow forms when sunlight enters raindrops, bends, reflects off the back of the drop and bends again "
     "as it leaves. Each colour bends by a different amount, so white light spreads into a band of colours.",
     ("sunlight|light", "raindrop|droplet|water", "bend|refract", "reflect|colour|color")),
    (("What is climate change?", "Explain climate change briefly."),
     "Climate change is the long-term warming of Earth and the shifts in weather that come with it. It is "
     "driven mainly by greenhouse gases such as carbon dioxide from burning coal, oil and gas.",
     ("warm|temperature", "greenhouse", "carbon dioxide|co2", "fossil|coal|oil|gas")),
    (("How do I get better at public speaking?", "Tips to be less nervous giving a talk?"),
     "Practise your talk out loud several times, ideally in front of a friend or a camera. Know your opening "
     "well, speak slowly, pause to breathe, and remember the audience wants you to do well.",
     ("practi", "slow|pause|breath", "audience", "opening|structure|notes")),
    (("What does DNA do?", "What is DNA for?"),
     "DNA carries the genetic instructions for building and running a living thing. Its sequence of bases "
     "encodes genes, which cells read to make proteins, and it is copied and passed on to offspring.",
     ("genetic|gene", "instruction|code", "protein", "cell|offspring|inherit")),
    (("Why do we have to brush our teeth?", "What happens if you don't brush your teeth?"),
     "Brushing removes plaque, a sticky film of bacteria that feeds on sugar and makes acid. Left alone, the "
     "acid causes cavities and the plaque hardens and inflames the gums, leading to gum disease.",
     ("plaque", "bacteria", "cavit|decay|acid", "gum")),
    (("How does a battery work?", "What happens inside a battery?"),
     "A battery stores energy in chemicals. When it is connected in a circuit, a chemical reaction moves "
     "electrons from the negative terminal through the circuit to the positive one, which is electric current.",
     ("chemical|reaction", "electron", "circuit|current", "terminal|negative|positive")),
    (("What is a healthy breakfast?", "What should I eat for a healthy breakfast?"),
     "A healthy breakfast combines protein, fibre and some fruit, for example oatmeal with nuts and berries or "
     "eggs with wholegrain toast. It keeps you full longer than sugary cereal or pastries.",
     ("protein|egg", "fib|whole|oat", "fruit|berr", "sugar|full|energy")),
    (("Why did the Roman Empire fall?", "What led to the fall of the Western Roman Empire?"),
     "The Western Roman Empire fell in 476 after a long decline. Political instability, economic trouble and "
     "heavy taxes weakened it, while invasions by Germanic peoples broke its frontiers.",
     ("instabil|politic|civil", "econom|tax|inflation", "invasion|barbarian|germanic|goth", "476|decline|west")),
    (("How do I remove a coffee stain from a shirt?", "What gets coffee stains out of clothes?"),
     "Rinse the stain from the back with cold water as soon as you can. Rub in a little liquid detergent or "
     "dish soap, let it sit for a few minutes, then wash the shirt as usual and check before drying.",
     ("cold water|rinse", "detergent|soap", "wash", "dry|dryer|sit")),
    (("What is machine learning?", "Explain machine learning in simple terms."),
     "Machine learning is a way of building computer programs that learn patterns from data instead of being "
     "given explicit rules. A model is trained on examples and then makes predictions on new data.",
     ("data", "pattern|learn", "train|example", "predict|model")),
)

_WRAPPERS = ("{q}", "{q}", "Quick question: {q}", "{q} Thanks!", "Could you tell me: {q}")
NEED = 2  # key ideas an answer must cover to be correct


def _pool() -> list[dict]:
    return [{"key": "explain:" + phrasings[0], "prompts": phrasings, "answer": answer, "keys": list(keys)}
            for phrasings, answer, keys in EXPLAIN]


def _sentences(text: str) -> list[str]:
    parts, start = [], 0
    for i, c in enumerate(text):
        if c in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
            parts.append(text[start:i + 1].strip())
            start = i + 1
    return [p for p in parts if p]


def explain(rng: random.Random, split: str) -> Item:
    item = rng.choice(split_pool(_pool(), lambda it: it["key"], split))
    sentences = _sentences(item["answer"])
    meta_keys = {"keys": item["keys"], "need": NEED}
    # the shortest run of opening sentences that is still a correct answer (bare but relevant)
    bare = next((" ".join(sentences[:k]) for k in range(1, len(sentences) + 1)
                 if explain_coverage(meta_keys, " ".join(sentences[:k])) >= NEED), item["answer"])
    words = item["answer"].split()
    cut = " ".join(words[:max(4, len(words) // 3)]).rstrip(".,;")
    return Item(
        prompt=rng.choice(_WRAPPERS).format(q=rng.choice(item["prompts"])),
        meta={"kind": "helpful", "task": "explain", "is_safety": False, "category": None, "item": item["key"],
              "keys": item["keys"], "need": NEED, "expected": item["answer"]},
        # reference: the full answer; bare: its opening sentences, just enough to be correct (relevant
        # but less informative; the whole answer where its first sentence already says everything);
        # truncated: cut mid-sentence at a third of its words.
        variants={"reference": [item["answer"]], "bare": [bare], "truncated": [cut]},
    )
