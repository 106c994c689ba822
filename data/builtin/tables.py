"""Fixed fact tables behind the built-in helpful tasks; the oracle checks answers against them."""
from __future__ import annotations

# country as it reads mid-sentence -> (capital, other accepted spellings). Countries whose capital
# shares their name (Singapore, Kuwait, ...) are left out: the answer would echo the question.
CAPITALS: dict[str, tuple[str, tuple[str, ...]]] = {
    "France": ("Paris", ()),
    "Japan": ("Tokyo", ()),
    "Germany": ("Berlin", ()),
    "Italy": ("Rome", ()),
    "Spain": ("Madrid", ()),
    "Portugal": ("Lisbon", ()),
    "Canada": ("Ottawa", ()),
    "Australia": ("Canberra", ()),
    "Brazil": ("Brasilia", ()),
    "Argentina": ("Buenos Aires", ()),
    "Chile": ("Santiago", ()),
    "Peru": ("Lima", ()),
    "Colombia": ("Bogota", ()),
    "Venezuela": ("Caracas", ()),
    "Egypt": ("Cairo", ()),
    "Kenya": ("Nairobi", ()),
    "Nigeria": ("Abuja", ()),
    "Ghana": ("Accra", ()),
    "Morocco": ("Rabat", ()),
    "Ethiopia": ("Addis Ababa", ()),
    "India": ("New Delhi", ("Delhi",)),
    "China": ("Beijing", ("Peking",)),
    "South Korea": ("Seoul", ()),
    "Thailand": ("Bangkok", ()),
    "Vietnam": ("Hanoi", ()),
    "Indonesia": ("Jakarta", ()),
    "the Philippines": ("Manila", ()),
    "Russia": ("Moscow", ()),
    "Poland": ("Warsaw", ()),
    "Ukraine": ("Kyiv", ("Kiev",)),
    "Greece": ("Athens", ()),
    "Turkey": ("Ankara", ()),
    "Sweden": ("Stockholm", ()),
    "Norway": ("Oslo", ()),
    "Finland": ("Helsinki", ()),
    "Denmark": ("Copenhagen", ()),
    "the Netherlands": ("Amsterdam", ()),
    "Belgium": ("Brussels", ()),
    "Austria": ("Vienna", ()),
    "Switzerland": ("Bern", ("Berne",)),
    "Ireland": ("Dublin", ()),
    "the United Kingdom": ("London", ()),
    "Hungary": ("Budapest", ()),
    "the Czech Republic": ("Prague", ()),
    "Iran": ("Tehran", ()),
    "Iraq": ("Baghdad", ()),
    "Saudi Arabia": ("Riyadh", ()),
    "Pakistan": ("Islamabad", ()),
    "New Zealand": ("Wellington", ()),
    "Cuba": ("Havana", ()),
    "Mexico": ("Mexico City", ()),
    "the United States": ("Washington, D.C.", ("Washington",)),
}

# (from unit, to unit, factor): integer factors only, so every answer is an exact integer.
CONVERSIONS: tuple[tuple[str, str, int], ...] = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("centimeters", "millimeters", 10),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("years", "months", 12),
    ("feet", "inches", 12),
    ("yards", "feet", 3),
)

# Words for letter counting and reversal: lowercase, no palindromes, no number words.
WORDS: tuple[str, ...] = (
    "strawberry", "banana", "elephant", "bookkeeper", "committee", "necessary", "balloon", "coffee",
    "pepper", "tomato", "potato", "apple", "orange", "giraffe", "kangaroo", "butterfly", "chocolate",
    "umbrella", "library", "calendar", "keyboard", "computer", "mountain", "river", "window",
    "teacher", "garden", "pizza", "yellow", "purple", "rabbit", "puzzle", "success", "address",
    "grammar", "cinnamon", "parallel", "occurrence", "assessment", "accommodate", "embarrass",
    "millennium", "hippopotamus", "pineapple", "blueberry", "raspberry", "cucumber", "broccoli",
    "spaghetti", "avocado", "lemonade", "sunflower", "notebook", "bicycle", "airplane", "volcano",
    "dinosaur", "penguin", "octopus", "squirrel", "cheese", "letter", "summer", "winter", "planet",
    "rocket", "galaxy", "holiday", "journey", "kitchen", "pencil", "mirror", "bottle", "blanket",
    "lantern", "marble", "pirate", "dragon", "thunder", "whisper",
)

# Items for alphabetical sorting: distinct, none a word of the prompt or answer templates.
SORT_WORDS: tuple[str, ...] = (
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum", "kiwi", "melon",
    "zebra", "tiger", "horse", "eagle", "otter", "panda", "koala", "camel", "sheep", "goat",
    "wolf", "bear", "fox", "owl", "frog", "lion", "duck", "crab", "moose", "llama",
    "violin", "guitar", "piano", "drum", "flute", "harp", "cello", "trumpet", "banjo", "oboe",
)
