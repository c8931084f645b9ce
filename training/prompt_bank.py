"""Template-generated user prompts for drafter self-distillation.

The drafter learns to predict the answers a small chat model (SmolLM2-135M-Instruct) gives to many prompts,
so it needs a large and diverse prompt set. This module builds one programmatically from original templates
and word lists (no datasets, no files, no network), spread round-robin over thirteen task categories.
Output is deterministic for a given seed, and generate_prompts(n) is a prefix of generate_prompts(m) for n < m
with the same seed, so resumable pipelines can grow the set later.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence

CATEGORIES: tuple[str, ...] = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
    "translation",
    "summarization",
    "qa",
    "math_reasoning",
    "rag",
)

MAX_PROMPT_CHARS = 1200
# Cap on distinct prompts per category: every category's template space is several times larger, so rejection
# sampling fills it quickly. generate_prompts raises ValueError for counts beyond 13 * this.
MAX_PER_CATEGORY = 5000
_ATTEMPTS_PER_PROMPT = 500  # rejection-sampling budget for one new distinct prompt

Template = Callable[[random.Random], str]


# ---------------------------------------------------------------------------------------------------------
# Shared helpers and word lists
# ---------------------------------------------------------------------------------------------------------


def _c(rng: random.Random, seq: Sequence):
    """Uniform choice from a sequence."""
    return seq[rng.randrange(len(seq))]


def _an(phrase: str) -> str:
    """Prefix the indefinite article ('a'/'an') to a phrase."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b, and c'."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


_SMALL_WORDS = frozenset(("a", "an", "the", "on", "in", "of", "to", "and", "for", "at", "with", "from", "by", "or"))


def _title(s: str) -> str:
    """Headline case: capitalize words except short function words (the first word always)."""
    words = s.split(" ")
    return " ".join(_cap(w) if i == 0 or w not in _SMALL_WORDS else w for i, w in enumerate(words))


def _money(rng: random.Random, lo: float, hi: float, symbol: str = "$", cents: bool = True) -> str:
    value = rng.uniform(lo, hi)
    return f"{symbol}{value:,.2f}" if cents else f"{symbol}{int(value):,}"


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _date(rng: random.Random, years: tuple[int, int] = (2019, 2026)) -> str:
    return f"{_c(rng, _MONTHS)} {rng.randint(1, 28)}, {rng.randint(*years)}"


def _date_pair(rng: random.Random, max_gap_days: int = 30) -> tuple[str, str]:
    """Two formatted dates, the second 1..max_gap_days after the first."""
    start = datetime.date(rng.randint(2019, 2026), rng.randint(1, 12), rng.randint(1, 28))
    end = start + datetime.timedelta(days=rng.randint(1, max_gap_days))
    return f"{_MONTHS[start.month - 1]} {start.day}, {start.year}", f"{_MONTHS[end.month - 1]} {end.day}, {end.year}"


def _clock(rng: random.Random) -> str:
    hour = rng.randint(7, 19)  # business hours
    return f"{(hour - 1) % 12 + 1}:{_c(rng, ('00', '15', '30', '45'))} {'AM' if hour < 12 else 'PM'}"


_FEMALE = ("Alice", "Maria", "Priya", "Sofia", "Hannah", "Leila", "Chloe", "Mei", "Amara", "Olivia", "Fatima",
           "Elena", "Grace", "Nadia", "Ingrid", "Yuki", "Zoe", "Isabel", "Rosa", "Aisha", "Clara", "Nora", "Lucia",
           "Emma", "Ava", "Mila", "Keiko", "Tara", "Julia", "Sara", "Lena", "Maya", "Ines", "Freya", "Daniela")
_MALE = ("Ben", "Carlos", "Diego", "Omar", "Liam", "Kenji", "Mateo", "Samuel", "Ravi", "Jonas", "Noah", "Ethan",
         "Luca", "Tariq", "Felix", "Hugo", "Ivan", "Marcus", "Arjun", "Tomas", "Leo", "Owen", "Malik", "Henry",
         "Daniel", "Yusuf", "Pablo", "Oscar", "Theo", "Kofi", "Andre", "Victor", "Elias", "Finn", "Rafael")
_NAMES = _FEMALE + _MALE
_SURNAMES = ("Garcia", "Nakamura", "Okafor", "Schmidt", "Patel", "Rossi", "Kowalski", "Haddad", "Lindqvist",
             "Moreau", "Chen", "Silva", "Novak", "Andersen", "Kim", "Fernandez", "Mensah", "Ivanova", "Dubois",
             "Tanaka", "Murphy", "Costa", "Weber", "Singh", "Larsen", "Ortiz", "Bianchi", "Yilmaz", "Brennan",
             "Walsh", "Kaur", "Suzuki", "Alvarez", "Becker", "Horvath", "Nguyen", "Adeyemi", "Petrov", "Quinn",
             "Santos")
_CITIES = ("Lisbon", "Toronto", "Nairobi", "Osaka", "Denver", "Melbourne", "Vienna", "Austin", "Seoul", "Dublin",
           "Cape Town", "Montreal", "Oslo", "Lyon", "Porto", "Krakow", "Edinburgh", "Vancouver", "Singapore",
           "Buenos Aires", "Helsinki", "Seattle", "Munich", "Barcelona", "Manchester", "Auckland", "Chicago",
           "Rotterdam", "Prague", "Bangalore", "Lima", "Copenhagen", "Atlanta", "Brisbane", "Zurich", "Valencia",
           "Accra", "Hamburg", "Boston", "Istanbul", "Mexico City", "Stockholm", "Phoenix", "Milan", "Glasgow",
           "Kyoto", "Marseille", "Calgary", "Santiago", "Athens")
_CO_WORDS = ("Bluefin", "Larkspur", "Ironwood", "Silverline", "Northgate", "Brightpath", "Cedarpoint", "Redstone",
             "Greenleaf", "Summit", "Harborview", "Clearwater", "Oakridge", "Starling", "Meridian", "Copperfield",
             "Foxglove", "Windmill", "Evergreen", "Bluebell", "Stonebridge", "Lighthouse", "Quarry", "Juniper",
             "Riverbend", "Falcon", "Amberly", "Kestrel", "Maplewood", "Pinecrest")
_CO_KINDS = ("Logistics", "Labs", "Foods", "Robotics", "Textiles", "Analytics", "Energy", "Software", "Pharma",
             "Outfitters", "Media", "Health", "Motors", "Furniture", "Insurance", "Bakery", "Design", "Systems",
             "Hardware", "Travel")


def _company(rng: random.Random) -> str:
    return f"{_c(rng, _CO_WORDS)} {_c(rng, _CO_KINDS)}"


def _person(rng: random.Random) -> str:
    return f"{_c(rng, _NAMES)} {_c(rng, _SURNAMES)}"


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------

_W_SUBJECTS = (
    "the first snowfall of winter", "an abandoned lighthouse", "a busy train station at dawn",
    "a grandmother's kitchen", "the ocean at night", "a forgotten letter in a drawer", "moving to a new city",
    "the last day of summer", "a stray cat that adopts a family", "a rainy afternoon in a bookshop",
    "learning to ride a bicycle", "the smell of fresh bread", "a mountain village", "an old oak tree",
    "friendship across generations", "a lost umbrella", "a night sky full of stars", "city rooftops",
    "a farmers' market", "the first day at a new job", "a long road trip", "a garden in spring",
    "an empty playground", "a summer thunderstorm", "a kite on a windy beach", "the sound of a violin",
    "a flock of migrating geese", "a small-town diner", "a desert at sunrise", "an astronaut looking back at Earth",
    "a handwritten recipe", "a broken clock", "the quiet after a party", "a river that floods every spring",
    "a child's first snowman", "autumn leaves", "a crowded subway car", "a retired sailor",
    "the changing of the seasons", "a robot learning to paint", "a bakery before sunrise", "an island with no cars",
    "a library at closing time", "a walk through a foggy forest", "a wedding in the rain", "the moon over a harbor",
    "a marathon runner's last mile", "an old photograph", "a village festival", "a coffee shop regular",
)
_W_TONES = ("hopeful", "melancholic", "playful", "nostalgic", "humorous", "solemn", "whimsical", "inspiring", "calm",
            "dramatic", "bittersweet", "warm", "mysterious", "cheerful", "reflective")
_W_AUDIENCES = ("young children", "teenagers", "busy parents", "college students", "retirees",
                "small business owners", "first-time home buyers", "outdoor enthusiasts", "software developers",
                "amateur cooks", "fitness beginners", "frequent travelers", "pet owners", "gardeners",
                "remote workers", "music lovers", "new employees", "book club members")
_W_PRODUCTS = (
    "a solar-powered phone charger", "a reusable water bottle that tracks how much you drink",
    "a noise-cancelling sleep mask", "a foldable electric bike", "a smart plant pot", "a handmade ceramic mug",
    "a waterproof hiking backpack", "a compact espresso maker", "an ergonomic office chair",
    "a children's picture book about the moon", "a weighted blanket", "a mechanical keyboard",
    "a bamboo cutting board set", "a portable projector", "a beginner's watercolor kit", "a smart doorbell",
    "an insulated lunch box", "a pair of trail running shoes", "a language-learning app", "a wool winter scarf",
    "a bird feeder with a built-in camera", "a cast-iron skillet", "a memory-foam travel pillow",
    "a standing desk converter", "an herbal tea sampler", "a cooperative board game for families",
    "a rechargeable desk lamp", "a dog harness for large breeds", "a silent wall clock", "a pocket-sized notebook",
)
_W_POEM_FORMS = ("haiku", "sonnet", "limerick", "free-verse poem", "short rhyming poem", "four-stanza poem",
                 "poem in the style of a lullaby", "acrostic poem", "ballad", "two-line poem")
_W_EMAILS = (
    ("your landlord", "about a leaking kitchen faucet"), ("your manager", "asking for Friday off"),
    ("a new client", "introducing yourself and your services"), ("your team", "announcing a new project"),
    ("a former professor", "asking for a letter of recommendation"),
    ("a hotel", "requesting a late check-out"), ("an online store", "requesting a refund for a damaged order"),
    ("a colleague", "thanking them for their help on a presentation"),
    ("your neighbors", "inviting them to a street party"), ("a supplier", "asking why a delivery is late"),
    ("a job applicant", "inviting them to a second interview"),
    ("your child's teacher", "asking for a meeting about homework"),
    ("a conference organizer", "proposing a talk on remote work"),
    ("your gym", "cancelling your membership"), ("a customer", "apologizing for a billing mistake"),
    ("a recruiter", "politely declining a job offer"), ("your book club", "suggesting next month's book"),
    ("a local newspaper", "pitching a story about a community garden"),
    ("the IT department", "reporting that your laptop will not turn on"),
    ("a wedding venue", "asking about prices for a June date"),
    ("your team", "reminding them about Thursday's deadline"),
    ("a potential investor", "following up after a pitch meeting"),
    ("your mentor", "sharing good news about a promotion"),
    ("a university admissions office", "asking about scholarship options"),
)
_W_EMAIL_TONES = ("polite", "friendly", "formal", "brief", "firm but polite", "warm", "professional", "apologetic",
                  "enthusiastic", "concise")
_W_CHARACTERS = ("a retired astronaut", "a shy baker", "a curious ten-year-old", "an elderly fisherman",
                 "a street musician", "a tired nurse", "a young inventor", "a lonely robot",
                 "a night-shift security guard", "a village postmaster", "a talking fox", "a new teacher",
                 "a lighthouse keeper", "a struggling painter", "a twelve-year-old chess champion",
                 "a ghost who is afraid of the dark", "a librarian", "a long-haul truck driver", "a beekeeper",
                 "a grumpy cat")
_W_SITUATIONS = ("finds a mysterious map inside a used book", "has to deliver a package before midnight",
                 "wakes up able to understand animals", "discovers a hidden room in their house",
                 "gets stuck in an elevator with a stranger", "receives a letter from their future self",
                 "must win a baking contest to save the family shop", "finds a door that appears only when it rains",
                 "makes friends with a neighbor they have never spoken to", "tries to repair a broken music box",
                 "discovers that their town has vanished from every map",
                 "has one last chance to apologize to an old friend", "wins a trip to the moon",
                 "finds a wallet full of old coins", "is asked to keep a secret for a whole year")
_W_BUSINESSES = ("a neighborhood bakery", "an electric car charging network", "a dog-walking service",
                 "a city recycling program", "a community library", "a yoga studio", "a plumbing company",
                 "a vegan food truck", "a coding bootcamp", "an independent bookstore", "a bike repair shop",
                 "a tea house", "a house cleaning service", "a children's science museum", "a farmers' cooperative",
                 "a cybersecurity startup", "a mountain ski resort", "a language school", "a family dental clinic",
                 "a used furniture store")
_W_LETTERS = (
    ("your younger self", "about what you wish you had known at sixteen"),
    ("your future self", "describing your hopes for the next ten years"),
    ("a favorite author", "explaining how one of their books changed your life"),
    ("the mayor of your town", "asking for more bike lanes"),
    ("a childhood friend you lost touch with", "trying to reconnect"),
    ("the editor of a local newspaper", "arguing that the town should keep its public library open"),
    ("a teacher who changed your life", "thanking them"),
    ("a company whose product broke after a week", "asking for a replacement"),
    ("a pen pal in another country", "describing a typical day in your town"),
    ("your grandparents", "telling them about your first year at university"),
    ("a new neighbor", "welcoming them to the street"),
    ("a scientist you admire", "asking how they chose their field"),
    ("the owner of a restaurant", "complimenting a memorable meal"),
    ("a soldier stationed far from home", "sending news and encouragement"),
)
_W_OCCASIONS = ("a high school graduation", "the opening of a community garden",
                "a retirement party for a longtime colleague", "a best friend's wedding",
                "a charity fundraiser for a children's hospital", "the launch of a new product",
                "the first meeting of a coding club", "a town hall meeting about road safety",
                "an award ceremony for volunteers", "a team's championship celebration",
                "the opening of a science fair", "the tenth anniversary of a small business",
                "the first day of a new school year", "a farewell party for a coworker moving abroad")
_W_REVIEWED = ("an Italian restaurant that just opened downtown", "a hotel stay in {city}", "a movie about time travel",
               "a new budget smartphone", "an evening cooking class", "a weekend camping trip",
               "a video game set on Mars", "a guided walking tour of {city}", "a pair of wireless earbuds",
               "a mystery novel you could not put down", "a local coffee shop", "a moving company",
               "a jazz concert", "a museum exhibition on ancient Egypt", "a meal-kit delivery service")
_W_REVIEW_ASPECTS = ("price", "customer service", "quality", "atmosphere", "ease of use", "value for money",
                     "the small details", "how it compares to similar options", "who it is best suited for")
_W_GOALS = ("sleep better", "save money on groceries", "stay focused while working from home", "read more books",
            "make your mornings calmer", "cut down on screen time", "keep houseplants alive", "start running",
            "learn a new language", "cook healthy meals on a budget", "organize a small apartment",
            "make friends in a new city")
_W_HOBBIES = ("birdwatching", "sourdough baking", "rock climbing", "watercolor painting", "chess", "beekeeping",
              "urban gardening", "photography", "knitting", "astronomy", "podcasting", "woodworking",
              "kayaking", "calligraphy")
_W_JOBS = ("junior data analyst", "marketing coordinator", "primary school teacher", "line cook", "nurse",
           "graphic designer", "customer success manager", "software engineer", "warehouse supervisor",
           "museum educator", "research assistant", "sales associate", "project manager", "librarian")
_W_SKILLS = ("your experience leading small teams", "your attention to detail", "a recent volunteer project",
             "your ability to explain complex ideas simply", "your background in customer service",
             "a successful project you led at university", "your calm under pressure",
             "your ability to learn new tools quickly")
_W_REWRITE = (
    "{n} forgot to send the report, so the meeting got pushed to next week.",
    "We can't refund your order because you waited too long to ask.",
    "The new office is okay I guess, but the coffee machine never works.",
    "{n} says the project is late because nobody told {n2} what to do.",
    "Your package is delayed and we don't know when it will arrive.",
    "I need the numbers by tomorrow or we're in trouble.",
    "The party was fun but the music was way too loud and we left early.",
    "{n} did a good job on the presentation even though some slides were messy.",
    "Please stop leaving dirty dishes in the kitchen sink.",
    "We're raising prices next month because everything costs more now.",
    "Thanks for the gift, {n}, it was nice.",
    "The meeting is cancelled, {n} is sick.",
)
_W_REWRITE_STYLES = ("formal", "friendly", "concise", "persuasive", "polite", "enthusiastic", "diplomatic",
                     "professional", "cheerful", "empathetic")
_W_SUFFIXES = ("", "", "", " Keep it under 150 words.", " Avoid clichés.", " Use vivid, concrete details.",
               " Make it suitable for all ages.", " End with a surprising twist.", " Give it a title.",
               " Write it in the first person.")


def _w_poem(rng: random.Random) -> str:
    form, subj, tone = _c(rng, _W_POEM_FORMS), _c(rng, _W_SUBJECTS), _c(rng, _W_TONES)
    return _c(rng, (
        f"Write {_an(form)} about {subj}.",
        f"Write {_an(form)} about {subj} in {_an(tone)} tone.",
        f"Compose {_an(tone)} {form} about {subj}.",
        f"Could you write me {_an(form)} about {subj}? I'd like it to feel {tone}.",
    )) + _c(rng, ("", "", " Give it a title.", " Make it rhyme.", " Avoid clichés."))


def _w_email(rng: random.Random) -> str:
    to, purpose = _c(rng, _W_EMAILS)
    tone = _c(rng, _W_EMAIL_TONES)
    return _c(rng, (
        f"Write {_an(tone)} email to {to} {purpose}.",
        f"Draft an email to {to} {purpose}. Keep the tone {tone}.",
        f"Help me write an email to {to.replace('your ', 'my ')} {purpose}. It should sound {tone}.",
        f"Write a short, {tone} email to {to} {purpose}. Include a subject line.",
    ))


def _w_product(rng: random.Random) -> str:
    product, audience = _c(rng, _W_PRODUCTS), _c(rng, _W_AUDIENCES)
    words = _c(rng, (50, 80, 100, 120, 150))
    return _c(rng, (
        f"Write a product description for {product} aimed at {audience}.",
        f"Write a {words}-word product description for {product}.",
        f"Write an online store listing for {product}. The main buyers are {audience}.",
        f"Create a catchy product description for {product} that highlights three key features.",
        f"Write a short, {_c(rng, _W_TONES)} description of {product} for {audience}.",
    ))


def _w_story(rng: random.Random) -> str:
    ch, sit = _c(rng, _W_CHARACTERS), _c(rng, _W_SITUATIONS)
    return _c(rng, (
        f"Write a short story about {ch} who {sit}.",
        f"Write a {_c(rng, (100, 150, 200, 300, 500))}-word story about {ch} who {sit}.",
        f"Tell a bedtime story about {ch} who {sit}.",
        f"Write the opening scene of a mystery in which {ch} {sit}.",
        f"Write a fable about {ch} who {sit}, and end it with a moral.",
        f"Write {_an(_c(rng, _W_TONES))} short story about {ch} who {sit}.",
    )) + _c(rng, _W_SUFFIXES)


def _w_slogan(rng: random.Random) -> str:
    biz, n = _c(rng, _W_BUSINESSES), rng.randint(3, 10)
    return _c(rng, (
        f"Come up with {n} catchy slogans for {biz}.",
        f"Suggest {n} short taglines for {biz}.",
        f"Write {n} slogans for {biz} that would appeal to {_c(rng, _W_AUDIENCES)}.",
        f"I'm opening {biz}. Give me {n} memorable slogan ideas.",
        f"Brainstorm {n} {_c(rng, _W_TONES)} slogans for {biz}.",
    ))


def _w_letter(rng: random.Random) -> str:
    to, about = _c(rng, _W_LETTERS)
    return _c(rng, (
        f"Write a letter to {to} {about}.",
        f"Write a heartfelt letter to {to} {about}.",
        f"Write a one-page letter to {to} {about}.",
        f"Draft a {_c(rng, _W_TONES)} letter to {to} {about}.",
    )) + _c(rng, ("", "", " Keep it under 200 words.", " Sign it with a made-up name."))


def _w_speech(rng: random.Random) -> str:
    occ = _c(rng, _W_OCCASIONS)
    return _c(rng, (
        f"Write a {rng.randint(2, 5)}-minute speech for {occ}.",
        f"Draft a short toast for {occ}.",
        f"Write an opening speech for {occ} in {_an(_c(rng, _W_TONES))} tone.",
        f"Write a speech for {occ} that includes a personal story and a call to action.",
        f"I have to speak at {occ}. Write me a {_c(rng, _W_TONES)} speech of about {rng.randint(2, 6) * 50} words.",
    ))


def _w_review(rng: random.Random) -> str:
    thing = _c(rng, _W_REVIEWED).format(city=_c(rng, _CITIES))
    stars, aspect = rng.randint(1, 5), _c(rng, _W_REVIEW_ASPECTS)
    return _c(rng, (
        f"Write a {stars}-star review of {thing}.",
        f"Write a {stars}-star review of {thing} that mentions {aspect}.",
        f"Write a balanced review of {thing}, covering both good and bad points.",
        f"Write a short customer review of {thing} focusing on {aspect}.",
        f"Write a humorous {stars}-star review of {thing}.",
    ))


def _w_blog(rng: random.Random) -> str:
    title = _c(rng, (
        f"{rng.randint(3, 12)} Simple Ways to {_title(_c(rng, _W_GOALS))}",
        f"A Beginner's Guide to {_title(_c(rng, _W_HOBBIES))}",
        f"What {_title(_c(rng, _W_HOBBIES))} Taught Me About Patience",
        f"Why Everyone Should Try {_title(_c(rng, _W_HOBBIES))} Once",
        f"How I Learned to {_title(_c(rng, _W_GOALS))}",
    ))
    return _c(rng, (
        f"Write the opening paragraph of a blog post titled \"{title}\".",
        f"Write a blog post titled \"{title}\" for {_c(rng, _W_AUDIENCES)}.",
        f"Outline a blog post called \"{title}\" with an introduction, main sections, and a conclusion.",
        f"Write a short blog post titled \"{title}\".{_c(rng, _W_SUFFIXES)}",
    ))


def _w_social(rng: random.Random) -> str:
    what = _c(rng, (
        f"the grand opening of {_c(rng, _W_BUSINESSES)}", f"a free beginner workshop on {_c(rng, _W_HOBBIES)}",
        f"a summer sale on {_c(rng, _W_PRODUCTS)}", "a charity 5K run this weekend",
        f"a new branch of {_c(rng, _W_BUSINESSES)} in {_c(rng, _CITIES)}",
        f"{_c(rng, _W_OCCASIONS)}", f"the launch of {_c(rng, _W_PRODUCTS)}",
    ))
    return _c(rng, (
        f"Write a social media post announcing {what}.",
        f"Write a short, upbeat post announcing {what}. Add a few hashtags.",
        f"Write three different social media captions announcing {what}.",
        f"Write a post for a community newsletter about {what}, aimed at {_c(rng, _W_AUDIENCES)}.",
    ))


def _w_dialogue(rng: random.Random) -> str:
    a, b = rng.sample(_W_CHARACTERS, 2)
    topic = _c(rng, _W_SUBJECTS)
    return _c(rng, (
        f"Write a short dialogue between {a} and {b} about {topic}.",
        f"Write a {_c(rng, _W_TONES)} conversation between {a} and {b} who meet by chance.",
        f"Write a scene where {a} tries to convince {b} to go on an adventure.",
        f"Write a dialogue in which {a} explains {topic} to {b}.",
    ))


def _w_cover(rng: random.Random) -> str:
    job, skill, co = _c(rng, _W_JOBS), _c(rng, _W_SKILLS), _company(rng)
    return _c(rng, (
        f"Write a cover letter for {_an(job)} position at {co}, highlighting {skill}.",
        f"Help me write a short cover letter for {_an(job)} job. I want to emphasize {skill}.",
        f"Write the first paragraph of a cover letter for {_an(job)} role at {co}.",
        f"Write a LinkedIn summary for {_an(job)} that mentions {skill}.",
    ))


def _w_rewrite(rng: random.Random) -> str:
    n, n2 = rng.sample(_NAMES, 2)
    sentence = _c(rng, _W_REWRITE).format(n=n, n2=n2)
    style = _c(rng, _W_REWRITE_STYLES)
    return _c(rng, (
        f"Rewrite the following sentence to sound more {style}: \"{sentence}\"",
        f"Make this message more {style}: \"{sentence}\"",
        f"How could I say this in a more {style} way? \"{sentence}\"",
        f"Rewrite this in three different ways, each more {style} than the last: \"{sentence}\"",
    ))


_WRITING: tuple[Template, ...] = (_w_poem, _w_email, _w_product, _w_story, _w_slogan, _w_letter, _w_speech,
                                  _w_review, _w_blog, _w_social, _w_dialogue, _w_cover, _w_rewrite)


# ---------------------------------------------------------------------------------------------------------
# roleplay
# ---------------------------------------------------------------------------------------------------------

_RP_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a ship's captain in the 1800s", ("Describe the storm your crew survived last night.",
                                        "Give orders to your crew as a storm approaches.")),
    ("a medieval blacksmith", ("Explain to a young apprentice how you forge a sword.",
                               "Haggle with a knight who thinks your prices are too high.")),
    ("a museum tour guide", ("Introduce the museum's most famous painting to a group of visitors.",
                             "Answer a child who asks why the old statues have no arms.")),
    ("a detective in 1920s Chicago", ("Question a nervous witness about a stolen necklace.",
                                      "Explain how you cracked your most difficult case.")),
    ("a barista at a busy coffee shop", ("Recommend a drink to a customer who doesn't like coffee.",
                                         "Calm down a customer whose order was wrong.")),
    ("an astronaut on a space station", ("Describe what a normal morning looks like in orbit.",
                                         "Answer questions from a class of schoolchildren over a video call.")),
    ("a personal fitness trainer", ("Give a pep talk to a client who wants to quit.",
                                    "Design a 20-minute workout for a beginner with no equipment.")),
    ("a travel agent", ("Plan a five-day trip to {city} for a family with two kids.",
                        "Convince a nervous flyer to take their first trip abroad.")),
    ("a job interviewer at a software company", ("Ask me the first three questions of an interview for a junior "
                                                 "developer role.",
                                                 "Give kind feedback to a candidate who answered poorly.")),
    ("a wise old wizard", ("Give advice to a young hero about to leave their village.",
                           "Explain the rules of magic to a curious apprentice.")),
    ("a customer support agent for an internet provider", ("Help a customer whose internet keeps disconnecting.",
                                                           "Explain a billing error to an upset customer.")),
    ("a nature documentary narrator", ("Narrate the daily life of a house cat.",
                                       "Describe a squirrel getting ready for winter.")),
    ("a chef at a fine-dining restaurant", ("Describe tonight's tasting menu to a table of guests.",
                                            "Teach a new cook how to make a perfect omelet.")),
    ("a kindergarten teacher", ("Explain to your class why we wash our hands.",
                                "Settle an argument between two children over a toy.")),
    ("a sports commentator", ("Commentate the final minute of a tied basketball game.",
                              "Describe a surprise goal in a soccer match.")),
    ("a pirate captain", ("Tell the crew where the buried treasure is hidden.",
                          "Negotiate with the captain of a merchant ship.")),
    ("a school librarian", ("Recommend three books to a teenager who says they hate reading.",
                            "Explain to a visitor how to find a book in the catalog.")),
    ("a tech support specialist", ("Walk an elderly customer through resetting a password.",
                                   "Explain what a software update does to someone who is nervous about computers.")),
    ("a park ranger", ("Brief a group of hikers on safety before a mountain trail.",
                       "Explain why visitors should not feed the wildlife.")),
    ("a real estate agent", ("Show a young couple around a small two-bedroom apartment.",
                             "Describe a house with a leaky roof honestly but positively.")),
    ("a time traveler from the year 2300", ("Describe daily life in your century.",
                                            "React to seeing a smartphone from today for the first time.")),
    ("a Roman senator", ("Give a speech arguing for a new aqueduct.",
                         "Complain about the rising price of bread in the city.")),
    ("a doctor at a walk-in clinic", ("Explain to a patient how to care for a sprained ankle.",
                                      "Reassure a nervous patient before a routine blood test.")),
    ("a game master in a fantasy adventure", ("Describe the entrance to a dark cave and ask the players what they do.",
                                              "Introduce a mysterious innkeeper to the party.")),
    ("a flight attendant", ("Give the safety announcement in a cheerful way.",
                            "Calm a passenger during heavy turbulence.")),
    ("a financial advisor", ("Explain to a 22-year-old why they should start saving early.",
                             "Help a family build a simple monthly budget.")),
    ("a famous novelist", ("Give advice to a writer who has writer's block.",
                           "Describe how you came up with the idea for your latest book.")),
    ("a dairy farmer", ("Explain to visiting city kids how cows are milked.",
                        "Describe how a dry summer affects your farm.")),
    ("a morning radio host", ("Open your show with a cheerful weather and traffic update for {city}.",
                              "Take a call from a listener who wants advice about a noisy neighbor.")),
    ("a shopkeeper in a fantasy village", ("Sell a magical lantern to a suspicious traveler.",
                                           "Tell a customer about the strange rumors in town.")),
    ("a patient math tutor", ("Help a student who is frustrated with fractions.",
                              "Explain why we can't divide by zero.")),
    ("an experienced gardener", ("Teach a beginner how to grow tomatoes on a balcony.",
                                 "Explain how to tell when vegetables are ready to harvest.")),
    ("a hotel concierge in {city}", ("Recommend things to do on a rainy day.",
                                     "Help a guest who lost their room key at midnight.")),
    ("a mountain guide", ("Explain what to pack for a two-day climb.",
                          "Tell your group why you are turning back before the summit.")),
    ("a robot butler", ("Greet the family as they return from vacation.",
                        "Explain politely that you cannot cook dinner because the stove is broken.")),
    ("a local news anchor", ("Report on a cat that was elected honorary mayor.",
                             "Introduce tonight's top story about a new bridge opening.")),
    ("a career counselor", ("Advise a student who can't choose between art school and engineering.",
                            "Help someone plan a career change at 40.")),
    ("a zookeeper", ("Explain to visitors what the elephants eat in a day.",
                     "Describe the personality of the zoo's oldest tortoise.")),
    ("a stand-up comedian", ("Perform a short, clean routine about grocery shopping.",
                             "Tell a few jokes about working from home.")),
    ("a language teacher", ("Teach me five useful phrases for ordering food in a restaurant.",
                            "Gently correct a student's mistakes and explain why.")),
    ("a medieval king", ("Address your people after a poor harvest.",
                         "Respond to a peasant who asks for lower taxes.")),
    ("a lighthouse keeper", ("Describe your nightly routine.",
                             "Tell a visitor about the ship you once saved.")),
)
_RP_GENERIC = (
    "Introduce yourself and describe a typical day.", "Describe the hardest part of your work.",
    "Give three tips to someone who wants to do what you do.", "Tell me about the most memorable day of your life.",
    "Tell me what you enjoy most about your work.", "Explain a common mistake that beginners make in your field.",
    "Describe the tools you use every day.", "Tell a short story from your work that still makes you laugh.",
    "Describe what you would change about your job if you could.",
    "Explain what you wish people understood about your work.",
    "Give me advice on handling stress, based on your experience.",
    "Greet a new visitor and ask how you can help them.", "Describe the moment you chose this life.",
    "Answer my question: what would you do with a free day?",
)
_RP_FRAMES = (
    "Pretend you are {role}. {task}", "Act as {role}. {task}", "You are {role}. {task}",
    "Imagine you're {role}. {task}", "I want you to act as {role}. {task} Stay in character.",
    "Role-play as {role}. {task}", "Take on the role of {role}. {task}", "From now on, you are {role}. {task}",
    "Play the part of {role}. {task}", "Speak as if you were {role}. {task}",
    "Respond in character as {role}. {task}", "Let's do a role-play. You are {role}. {task}",
    "For this conversation, you are {role}. {task}", "Stay in character as {role} for your whole answer. {task}",
)
_RP_SUFFIXES = ("", "", "", " Keep your reply under 120 words.", " Use the vocabulary someone in that role would use.",
                " Answer in the first person.", " Keep it light-hearted.", " Be as vivid as possible.",
                " Keep it short.")


def _rp(rng: random.Random) -> str:
    role, tasks = _c(rng, _RP_ROLES)
    task = _c(rng, tasks) if rng.random() < 0.45 else _c(rng, _RP_GENERIC)
    city = _c(rng, _CITIES)
    text = _c(rng, _RP_FRAMES).format(role=role.format(city=city), task=task.format(city=city))
    return text + _c(rng, _RP_SUFFIXES)


# One builder: the fourteen frames above are the templates, combined with role-specific or generic tasks.
_ROLEPLAY: tuple[Template, ...] = (_rp,)


# ---------------------------------------------------------------------------------------------------------
# reasoning
# ---------------------------------------------------------------------------------------------------------

# (comparative, opposite comparative, superlative, opposite superlative)
_R_ATTRS = (("taller", "shorter", "tallest", "shortest"), ("older", "younger", "oldest", "youngest"),
            ("faster", "slower", "fastest", "slowest"), ("heavier", "lighter", "heaviest", "lightest"),
            ("stronger", "weaker", "strongest", "weakest"))
_R_EXPLAIN = ("", " Explain your reasoning.", " Think step by step.", " Show how you worked it out.",
              " Answer briefly and justify it.")
_ORDINALS = ("first", "second", "third", "fourth", "fifth")
_NUMBER_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six")


def _r_compare(rng: random.Random) -> str:
    n = rng.randint(3, 5)
    people = rng.sample(_NAMES, n)  # from most to least of the attribute
    comp, opp, sup, osup = _c(rng, _R_ATTRS)
    facts = []
    for a, b in zip(people, people[1:]):
        facts.append(f"{a} is {comp} than {b}." if rng.random() < 0.5 else f"{b} is {opp} than {a}.")
    rng.shuffle(facts)
    x, y = rng.sample(people, 2)
    question = _c(rng, (f"Who is the {sup}?", f"Who is the {osup}?", f"Is {x} {comp} than {y}?",
                        f"List everyone from {sup} to {osup}.", f"Is {x} {opp} than {y}?"))
    intro = _c(rng, ("", "Consider these facts. ", "Read the statements carefully. ", "Here is a logic puzzle. "))
    return intro + " ".join(facts) + " " + question + _c(rng, _R_EXPLAIN)


def _r_race(rng: random.Random) -> str:
    n = rng.randint(3, 5)
    racers = rng.sample(_NAMES, n)  # finishing order
    race = _c(rng, ("swimming race", "bike race", "100-meter sprint", "cross-country race", "go-kart race",
                    "sack race", "spelling bee final", "rowing race", "marathon"))
    facts = []
    for a, b in zip(racers, racers[1:]):
        facts.append(_c(rng, (f"{a} finished before {b}.", f"{b} finished after {a}.",
                              f"{b} came in right behind {a}.")))
    rng.shuffle(facts)
    k = rng.randrange(n)
    question = _c(rng, ("Who won?", "Who finished last?", f"Who finished {_ORDINALS[k]}?",
                        f"In what position did {_c(rng, racers)} finish?", "What was the full finishing order?"))
    intro = f"{_NUMBER_WORDS[n]} friends took part in a {race}. "
    return intro + " ".join(facts) + " " + question + _c(rng, _R_EXPLAIN)


_R_GROUPS = ("cats", "mammals", "painters", "musicians", "early risers", "tea drinkers", "chess players",
             "cyclists", "engineers", "gardeners", "bloops", "razzies", "wugs", "glimmers", "zorbs", "fendles",
             "quibs", "snarfs", "poets", "runners", "teachers", "students", "dancers", "sailors")


def _r_syllogism(rng: random.Random) -> str:
    a, b, c = rng.sample(_R_GROUPS, 3)
    name = _c(rng, _NAMES)
    body = _c(rng, (
        f"All {a} are {b}. All {b} are {c}. Are all {a} {c}?",
        f"All {a} are {b}. Some {b} are {c}. Does it follow that some {a} are {c}?",
        f"No {a} are {b}. All {c} are {a}. Can any {c} be {b}?",
        f"Some {a} are {b}. No {b} are {c}. Must some {a} not be {c}?",
        f"All {a} are {b}. {name} is not one of the {b}. Is {name} one of the {a}?",
        f"All {a} are {b}. {name} is one of the {b}. Must {name} be one of the {a}?",
        f"No {a} are {b}. Some {b} are {c}. Can we conclude that some {c} are not {a}?",
    ))
    intro = _c(rng, ("Assume the following statements are true. ", "Suppose that: ", "Given these premises: ",
                     "Logic question: "))
    return intro + body + _c(rng, (" Explain why.", " Answer yes or no, then explain.", " Justify your answer.",
                                   ""))


_R_LEFT_OUT = (("an ice cube", "on a sunny windowsill"), ("a loaf of bread", "on the kitchen counter"),
               ("a glass of milk", "outside the fridge"), ("a steel bicycle", "out in the rain"),
               ("a banana", "in a warm room"), ("a chocolate bar", "in a parked car in summer"),
               ("a bowl of soup", "on the table"), ("a cut apple", "on a plate"), ("wet laundry", "in a closed bag"),
               ("a candle", "next to a hot radiator"), ("a houseplant", "in a dark closet"),
               ("a bottle of water", "in the freezer"))
_R_OBJECTS = ("a tennis ball", "a watermelon", "a laptop", "a bicycle", "a paperclip", "a grand piano",
              "a cat", "a sofa", "a coffee mug", "a refrigerator", "a shoe", "a textbook", "a car tire", "a kayak",
              "a toaster", "a pencil")
_R_CONTAINERS = ("a shoebox", "a backpack", "a kitchen drawer", "a car trunk", "a matchbox", "a suitcase",
                 "a bathtub", "an envelope", "a shopping bag", "an elevator")
_R_WEATHER = ("pouring with rain", "below freezing", "very hot and sunny", "windy and cold", "snowing heavily",
              "foggy and damp")
_R_PLACES = ("to a job interview", "to the beach", "on a hike in the hills", "to a wedding", "to school",
             "to a football match", "to the grocery store", "on a picnic", "for a run", "to the office")


def _r_common(rng: random.Random) -> str:
    name = _c(rng, _NAMES)
    item, place = _c(rng, _R_LEFT_OUT)
    o1, o2 = rng.sample(_R_OBJECTS, 2)
    return _c(rng, (
        f"If you leave {item} {place} for {_c(rng, ('an hour', 'a day', 'three days', 'two weeks', 'a month'))}, "
        f"what will probably happen to it?",
        f"Would {o1} fit inside {_c(rng, _R_CONTAINERS)}? Explain briefly.",
        f"Which is easier to carry up a flight of stairs: {o1} or {o2}? Why?",
        f"It is {_c(rng, _R_WEATHER)} outside and {name} is going {_c(rng, _R_PLACES)}. "
        f"What should {name} wear?",
        f"{name} put {_c(rng, ('a tray of water', 'a cup of juice', 'some soup'))} in the freezer "
        f"{_c(rng, ('five minutes', 'ten minutes', 'two hours', 'a day'))} ago. Is it likely frozen now? Why?",
        f"{name} dropped {o1} and {o2} from the same height at the same time. "
        f"Which one is more likely to break, and why?",
        f"Which would float in a bathtub, {o1} or {o2}? Explain your answer.",
    ))


def _r_days(rng: random.Random) -> str:
    day, n = _c(rng, _WEEKDAYS), rng.randint(2, 400)
    return _c(rng, (
        f"If today is {day}, what day of the week will it be in {n} days?",
        f"If {n} days ago it was {day}, what day is it today?",
        f"If the day after tomorrow is {day}, what day was yesterday?",
        f"If yesterday was {day}, what day will it be {n} days after tomorrow?",
        f"Today is {day}. What day of the week was it {n} days ago?",
    )) + _c(rng, _R_EXPLAIN)


def _r_sequence(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        a, d = rng.randint(-20, 50), rng.randint(2, 15) * _c(rng, (1, 1, -1))
        seq = [a + i * d for i in range(6)]
    elif kind == 1:
        a, r = rng.randint(1, 6), rng.randint(2, 4)
        seq = [a * r ** i for i in range(6)]
    elif kind == 2:
        a, off = rng.randint(1, 6), rng.randint(-3, 5)
        seq = [(a + i) ** 2 + off for i in range(6)]
    elif kind == 3:
        seq = [rng.randint(1, 9), rng.randint(1, 9)]
        while len(seq) < 7:
            seq.append(seq[-1] + seq[-2])
    else:
        a, p, q = rng.randint(1, 30), rng.randint(2, 9), rng.randint(1, 6)
        seq = [a]
        for i in range(6):
            seq.append(seq[-1] + (p if i % 2 == 0 else -q))
    shown = ", ".join(str(x) for x in seq[:-1])
    gap = rng.randint(1, len(seq) - 2)
    with_gap = ", ".join("?" if i == gap else str(x) for i, x in enumerate(seq))
    return _c(rng, (
        f"What number comes next in the sequence {shown}, ...?",
        f"Find the next number: {shown}, ?",
        f"Find the missing number in this sequence: {with_gap}.",
        f"What is the rule behind the sequence {shown}? Use it to find the next two terms.",
        f"Continue the pattern: {shown}, ...",
    )) + _c(rng, _R_EXPLAIN)


def _r_family(rng: random.Random) -> str:
    f1, f2 = rng.sample(_FEMALE, 2)
    m1, m2 = rng.sample(_MALE, 2)
    x = _c(rng, tuple(n for n in _NAMES if n not in (f1, f2, m1, m2)))
    return _c(rng, (
        f"{f1} is {m1}'s sister. {m1} is {x}'s father. How is {f1} related to {x}?",
        f"{m1} is the father of {m2}, and {m2} is the father of {x}. What is {m1} to {x}?",
        f"{f1}'s mother is {f2}. {f2}'s brother is {m1}. What is {m1} to {f1}?",
        f"{x}'s only brother, {m1}, has a daughter named {f1}. What is {f1} to {x}?",
        f"{f1} and {f2} are sisters. {f2} has a son named {m1}. How is {f1} related to {m1}?",
        f"{m1} is married to {f1}. {f1}'s father is {m2}. What is {m2} to {m1}?",
        f"{f1}'s grandmother has only one child, {m1}. How is {m1} related to {f1}?",
    )) + _c(rng, _R_EXPLAIN)


_R_KK_STATEMENTS = (
    ("{b} is a knave.", "We are both knights."), ("At least one of us is a knave.", None),
    ("{b} and I are the same type.", "{a} is a knave."), ("We are both knaves.", None),
    ("{b} is a knight.", "{a} and I are different types."), ("I am a knave or {b} is a knight.", None),
    ("Exactly one of us is a knight.", "{a} is telling the truth."),
)


def _r_knights(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    s1, s2 = _c(rng, _R_KK_STATEMENTS)
    text = (f"On an island, every inhabitant is either a knight, who always tells the truth, or a knave, who always "
            f"lies. You meet {a} and {b}. {a} says: \"{s1.format(a=a, b=b)}\"")
    if s2:
        text += f" {b} says: \"{s2.format(a=a, b=b)}\""
    return text + " " + _c(rng, (f"What are {a} and {b}?", "Who is a knight and who is a knave?",
                                 f"Is {a} a knight or a knave?")) + _c(rng, _R_EXPLAIN)


# (verb, plural verb, negated verb, noun, items as introduced, items as referred to later)
_R_TRIPLES = (
    ("owns", "own", "does not own", "pet", ("a dog", "a cat", "a parrot"), ("the dog", "the cat", "the parrot")),
    ("ordered", "ordered", "did not order", "drink", ("tea", "coffee", "juice"),
     ("the tea", "the coffee", "the juice")),
    ("plays", "play", "does not play", "instrument", ("the violin", "the drums", "the piano"),
     ("the violin", "the drums", "the piano")),
    ("drives", "drive", "does not drive", "car", ("a red car", "a blue car", "a green car"),
     ("the red car", "the blue car", "the green car")),
    ("lives on", "live on", "does not live on", "floor", ("the first floor", "the second floor", "the third floor"),
     ("the first floor", "the second floor", "the third floor")),
    ("studies", "study", "does not study", "subject", ("biology", "history", "music"), ("biology", "history", "music")),
)


def _r_assign(rng: random.Random) -> str:
    people = rng.sample(_NAMES, 3)
    verb, verb_pl, neg, noun, items, refs = _c(rng, _R_TRIPLES)
    perm = [0, 1, 2]
    rng.shuffle(perm)  # people[i] has item perm[i]
    # One clue fixes person 0, the other rules person 1 out of person 2's item: the answer is unique.
    clues = [f"{people[0]} {verb} {refs[perm[0]]}.", f"{people[1]} {neg} {refs[perm[2]]}."]
    rng.shuffle(clues)
    q = _c(rng, (f"Who {verb} {refs[perm[2]]}?", f"Who {verb} {refs[perm[1]]}?",
                 f"Work out which {noun} each person has."))
    return (f"{_join(people)} each {verb_pl} a different {noun}: {_join(items)}. " + " ".join(clues) + " " + q
            + _c(rng, _R_EXPLAIN))


_R_COND = (("it rains", "the picnic is moved indoors", "the picnic is not moved indoors"),
           ("the alarm rings", "{n} wakes up", "{n} does not wake up"),
           ("the store is open", "its lights are on", "its lights are off"),
           ("a number is divisible by 6", "it is divisible by 3", "it is not divisible by 3"),
           ("{n} studies", "{n} passes the quiz", "{n} does not pass the quiz"),
           ("the battery is charged", "the robot moves", "the robot does not move"),
           ("the train is late", "{n} misses the meeting", "{n} does not miss the meeting"),
           ("the password is correct", "the door unlocks", "the door does not unlock"),
           ("the plant gets sunlight", "it grows", "it does not grow"),
           ("the team wins on Saturday", "they reach the final", "they do not reach the final"),
           ("{n} drinks coffee late in the evening", "{n} sleeps badly", "{n} sleeps well"))


def _r_conditional(rng: random.Random) -> str:
    name = _c(rng, _NAMES)
    p, q, nq = (s.format(n=name) for s in _c(rng, _R_COND))
    return _c(rng, (
        f"If {p}, then {q}. We know that {nq}. What can we conclude?",
        f"If {p}, then {q}. We know that {q}. Can we conclude that {p}?",
        f"If {p}, then {q}. Suppose it is not true that {p}. Does it follow that {nq}?",
        f"If {p}, then {q}. We know that {p}. What follows?",
        f"Rule: if {p}, then {q}. Observation: {nq}. Is the rule broken, or can both be true?",
    )) + _c(rng, ("", " Explain the logic.", " Name the type of reasoning involved.", " Explain briefly."))


_R_CATS = {
    "fruits": ("apple", "banana", "cherry", "mango", "pear", "plum", "kiwi", "grape"),
    "vehicles": ("bus", "tractor", "scooter", "truck", "van", "tram", "motorcycle"),
    "instruments": ("violin", "trumpet", "flute", "cello", "drum", "harp", "clarinet"),
    "planets": ("Mars", "Venus", "Jupiter", "Saturn", "Neptune", "Mercury", "Uranus"),
    "colors": ("crimson", "turquoise", "beige", "violet", "olive", "amber", "indigo"),
    "tools": ("hammer", "wrench", "screwdriver", "saw", "chisel", "pliers", "drill"),
    "sports": ("tennis", "hockey", "rugby", "cricket", "golf", "volleyball", "badminton"),
    "birds": ("sparrow", "eagle", "robin", "heron", "owl", "pelican", "parrot"),
    "furniture": ("sofa", "wardrobe", "bookshelf", "armchair", "dresser", "stool", "desk"),
    "metals": ("copper", "iron", "zinc", "silver", "nickel", "tin", "aluminum"),
}
_R_ANALOGIES = (
    (("bird", "nest"), ("bee", "hive"), ("horse", "stable"), ("rabbit", "burrow"), ("lion", "den"), ("pig", "sty")),
    (("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"), ("frog", "tadpole"),
     ("goose", "gosling"), ("bear", "cub")),
    (("hammer", "carpenter"), ("scalpel", "surgeon"), ("brush", "painter"), ("wrench", "plumber"),
     ("needle", "tailor"), ("ladle", "cook")),
    (("hot", "cold"), ("early", "late"), ("fast", "slow"), ("open", "closed"), ("full", "empty"), ("light", "dark"),
     ("wide", "narrow")),
    (("page", "book"), ("wheel", "car"), ("petal", "flower"), ("key", "keyboard"), ("finger", "hand"),
     ("branch", "tree"), ("brick", "wall")),
    (("fish", "school"), ("wolf", "pack"), ("bee", "swarm"), ("cow", "herd"), ("bird", "flock"), ("lion", "pride")),
)


def _r_words(rng: random.Random) -> str:
    if rng.random() < 0.5:
        main, other = rng.sample(sorted(_R_CATS), 2)
        words = rng.sample(_R_CATS[main], 3) + [_c(rng, _R_CATS[other])]
        rng.shuffle(words)
        return _c(rng, (f"Which word is the odd one out: {', '.join(words)}?",
                        f"Which of these does not belong with the others: {', '.join(words)}?",
                        f"Find the word that doesn't fit: {', '.join(words)}.")) + _c(rng, _R_EXPLAIN)
    (a, b), (c, _) = rng.sample(_c(rng, _R_ANALOGIES), 2)
    return _c(rng, (f"Complete the analogy: {a} is to {b} as {c} is to what?",
                    f"\"{_cap(a)}\" is to \"{b}\" as \"{c}\" is to ____. Fill in the blank.",
                    f"{_cap(a)} : {b} :: {c} : ?  What word completes the analogy?")) + _c(rng, _R_EXPLAIN)


def _r_time(rng: random.Random) -> str:
    name = _c(rng, _NAMES)
    hour, m = rng.randint(6, 21), _c(rng, (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55))
    start = f"{(hour - 1) % 12 + 1}:{m:02d} {'AM' if hour < 12 else 'PM'}"
    return _c(rng, (
        f"A movie starts at {start} and runs {rng.randint(1, 2)} hours and {rng.randint(1, 59)} minutes. "
        f"What time does it end?",
        f"A bus leaves every {_c(rng, (10, 12, 15, 20, 25, 30))} minutes, and the first one leaves at {start}. "
        f"{name} reaches the stop {rng.randint(3, 95)} minutes after that. How long does {name} wait for the next bus?",
        f"{name}'s watch loses {rng.randint(2, 6)} minutes every hour. If it was set correctly at {start}, what time "
        f"will it show {rng.randint(2, 10)} hours later?",
        f"A meeting starts at {start} and lasts {rng.randint(20, 95)} minutes. The next meeting begins "
        f"{rng.randint(5, 30)} minutes after the first ends and lasts {rng.randint(15, 60)} minutes. "
        f"When does the second meeting end?",
    )) + _c(rng, _R_EXPLAIN)


_R_CREWS = (("painters", "paint a house"), ("machines", "fill 600 bottles"), ("gardeners", "mow a large park"),
            ("printers", "print the school newsletter"), ("bakers", "bake 240 rolls"),
            ("workers", "build a garden wall"), ("volunteers", "clean a beach"))


def _r_rate(rng: random.Random) -> str:
    who, task = _c(rng, _R_CREWS)
    n, m, h = rng.randint(2, 8), rng.randint(2, 12), rng.randint(4, 12)
    k = rng.randint(1, h - 2)
    after = "After 1 day" if k == 1 else f"After {k} days"
    return _c(rng, (
        f"If {n} {who} can {task} in {h} hours, how long would {m} {who} take, working at the same rate?",
        f"{n} {who} need {h} hours to {task}. How many {who} are needed to do it in {h // 2} hours?",
        f"It takes {n} {who} {h} days to {task}. {after}, {rng.randint(2, 4)} more {who} join. "
        f"How long does the whole job take?",
    )) + _c(rng, _R_EXPLAIN)


_REASONING: tuple[Template, ...] = (_r_compare, _r_race, _r_syllogism, _r_common, _r_days, _r_sequence, _r_family,
                                    _r_knights, _r_assign, _r_conditional, _r_words, _r_time, _r_rate)


# ---------------------------------------------------------------------------------------------------------
# math
# ---------------------------------------------------------------------------------------------------------

_M_ASK = ("", "", " Show your work.", " Explain each step.", " Give the final answer on its own line.")
_M_CONVERSIONS = (("kilometers", "miles"), ("miles", "kilometers"), ("kilograms", "pounds"), ("pounds", "kilograms"),
                  ("liters", "gallons"), ("gallons", "liters"), ("meters", "feet"), ("feet", "meters"),
                  ("centimeters", "inches"), ("inches", "centimeters"), ("hours", "seconds"), ("days", "minutes"),
                  ("square meters", "square feet"), ("ounces", "grams"), ("cups", "milliliters"),
                  ("kilometers per hour", "meters per second"), ("megabytes", "kilobytes"))


def _frac(rng: random.Random) -> str:
    d = rng.randint(2, 12)
    return f"{rng.randint(1, d - 1)}/{d}"


def _m_arith(rng: random.Random) -> str:
    a, b, c, d = (rng.randint(2, 999) for _ in range(4))
    expr = _c(rng, (f"{a} + {b} - {c}", f"{a} × {rng.randint(2, 99)}", f"{a * rng.randint(2, 30)} ÷ {a}",
                    f"{a} + {b} × {rng.randint(2, 20)}", f"({a} - {b}) × {rng.randint(2, 15)}",
                    f"{a} × {rng.randint(2, 9)} + {c} ÷ {_c(rng, (1, 2, 4, 5))}", f"{a} - {b} + {c} - {d}",
                    f"({a} + {b}) ÷ {_c(rng, (2, 3, 4, 5))}", f"{rng.randint(10, 99)}² - {rng.randint(10, 99)}"))
    return _c(rng, (f"What is {expr}?", f"Calculate {expr}.", f"Compute {expr}.",
                    f"Evaluate {expr} using the order of operations.")) + _c(rng, _M_ASK)


def _m_percent(rng: random.Random) -> str:
    p, n = rng.randint(1, 99), rng.randint(20, 5000)
    old = rng.randint(20, 900)
    new = old + rng.randint(-old // 2, old)
    return _c(rng, (
        f"What is {p}% of {n}?", f"{p} is what percent of {n + p}?",
        f"A price goes from ${old} to ${new}. What is the percent change?",
        f"Increase {n} by {p}%.", f"Decrease {n} by {p}%.", f"{p}% of a number is {n}. What is the number?",
        f"Express {p}/{n + p} as a percentage, rounded to one decimal place.",
    )) + _c(rng, _M_ASK)


def _m_fractions(rng: random.Random) -> str:
    f1, f2 = _frac(rng), _frac(rng)
    k = rng.randint(2, 9)
    return _c(rng, (
        f"Add {f1} and {f2}.", f"What is {f1} - {f2}?", f"Multiply {f1} by {f2}.", f"Divide {f1} by {f2}.",
        f"Simplify the fraction {rng.randint(1, 11) * k}/{rng.randint(12, 20) * k}.",
        f"Which is larger, {f1} or {f2}?", f"Convert {f1} to a decimal.",
        f"Write {rng.randint(2, 9)} {f1} as an improper fraction.", f"What is {f1} of {rng.randint(2, 40) * 12}?",
    )) + _c(rng, _M_ASK)


def _m_linear(rng: random.Random) -> str:
    x, a, b = rng.randint(-15, 25), rng.randint(2, 12), rng.randint(-40, 40)
    c, e = rng.randint(2, 9), rng.randint(1, 9)
    eq = _c(rng, (f"{a}x + {b} = {a * x + b}", f"{a}x - {abs(b)} = {a * x - abs(b)}",
                  f"{c}(x - {e}) = {c * (x - e)}", f"{a}x + {b} = {a - 1}x + {b + x}",
                  f"x/{c} + {e} = {x / c + e:g}" if x % c == 0 else f"{c}x = {c * x}"))
    eq = eq.replace("+ -", "- ").replace("- -", "+ ").replace(" 1x", " x")
    return _c(rng, (f"Solve for x: {eq}", f"Find x if {eq}.", f"What value of x satisfies {eq}?",
                    f"Solve the equation {eq} and check your answer.")) + _c(rng, _M_ASK)


def _m_convert(rng: random.Random) -> str:
    src, dst = _c(rng, _M_CONVERSIONS)
    v = _c(rng, (rng.randint(2, 500), round(rng.uniform(0.5, 120), 1)))
    t = rng.randint(-30, 110)
    return _c(rng, (f"Convert {v} {src} to {dst}.", f"How many {dst} are in {v} {src}?",
                    f"What is {v} {src} in {dst}?", f"Convert {t} degrees Fahrenheit to Celsius.",
                    f"Convert {t} degrees Celsius to Fahrenheit.")) + _c(rng, _M_ASK)


def _m_powers(rng: random.Random) -> str:
    n = rng.randint(2, 30)
    return _c(rng, (f"What is {n} squared?", f"What is {n} cubed?", f"What is the square root of {n * n}?",
                    f"What is {rng.randint(2, 5)} to the power of {rng.randint(2, 8)}?",
                    f"Estimate the square root of {rng.randint(10, 999)} to one decimal place.",
                    f"Simplify √{n * n * _c(rng, (2, 3, 5, 6, 7))}.")) + _c(rng, _M_ASK)


_M_ROUND_TO = ("the nearest whole number", "one decimal place", "two decimal places", "the nearest ten")


def _m_decimals(rng: random.Random) -> str:
    a, b = round(rng.uniform(0.1, 99), 2), round(rng.uniform(0.1, 20), 2)
    return _c(rng, (f"Multiply {a} by {b}.", f"What is {a} + {b}?", f"Subtract {b} from {a}.",
                    f"Divide {a} by {b} and round to two decimal places.",
                    f"Round {rng.uniform(0, 1000):.5f} to {_c(rng, _M_ROUND_TO)}.",
                    f"Write {a} as a fraction in simplest form.")) + _c(rng, _M_ASK)


def _m_stats(rng: random.Random) -> str:
    nums = ", ".join(str(rng.randint(1, 100)) for _ in range(rng.randint(5, 9)))
    return _c(rng, (f"Find the mean of these numbers: {nums}.", f"What is the median of {nums}?",
                    f"Find the mean, median, and range of: {nums}.", f"What is the mode of {nums}, if there is one?",
                    f"Sort these numbers and find the median: {nums}.")) + _c(rng, _M_ASK)


def _m_ratio(rng: random.Random) -> str:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    total = (a + b) * rng.randint(2, 60)
    return _c(rng, (f"Divide {total} in the ratio {a}:{b}.", f"Simplify the ratio {a * 6}:{b * 6}.",
                    f"If the ratio of boys to girls is {a}:{b} and there are {total} students, how many girls are "
                    f"there?", f"Split ${total} between two people in the ratio {a}:{b}.",
                    f"Are the ratios {a}:{b} and {a * 3}:{b * 3 + 1} equivalent?")) + _c(rng, _M_ASK)


def _m_geometry(rng: random.Random) -> str:
    w, h, r = rng.randint(2, 60), rng.randint(2, 60), rng.randint(1, 30)
    unit = _c(rng, ("cm", "m", "inches", "feet"))
    return _c(rng, (
        f"Find the area of a rectangle that is {w} {unit} by {h} {unit}.",
        f"What is the perimeter of a rectangle with sides {w} {unit} and {h} {unit}?",
        f"Find the area of a circle with radius {r} {unit}.",
        f"What is the circumference of a circle with diameter {2 * r} {unit}?",
        f"Find the area of a triangle with base {w} {unit} and height {h} {unit}.",
        f"A cube has sides of {r} {unit}. What is its volume?",
        f"A right triangle has legs of {w} {unit} and {h} {unit}. How long is the hypotenuse?",
    )) + _c(rng, _M_ASK)


def _m_system(rng: random.Random) -> str:
    x, y = rng.randint(-10, 20), rng.randint(-10, 20)
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    e1 = f"x + y = {x + y}"
    e2 = _c(rng, (f"x - y = {x - y}", f"{a}x + {b}y = {a * x + b * y}", f"{a}x - y = {a * x - y}"))
    return _c(rng, (f"Solve the system of equations: {e1} and {e2}.",
                    f"Find x and y if {e1} and {e2}.",
                    f"Use substitution to solve: {e1}, {e2}.",
                    f"Use elimination to solve: {e1}, {e2}.")) + _c(rng, _M_ASK)


def _m_numbers(rng: random.Random) -> str:
    a, b = rng.randint(4, 300), rng.randint(4, 300)
    return _c(rng, (f"Find the greatest common divisor of {a} and {b}.",
                    f"What is the least common multiple of {a % 40 + 2} and {b % 40 + 2}?",
                    f"Is {a * 7 + 1} a prime number?", f"List all the factors of {a}.",
                    f"Write the prime factorization of {a * b}.",
                    f"Write {rng.randint(1, 99) * 10 ** rng.randint(4, 9):,} in scientific notation.",
                    f"What is the remainder when {a * b + 7} is divided by {rng.randint(3, 13)}?")) + _c(rng, _M_ASK)


def _m_money(rng: random.Random) -> str:
    p, r, t = rng.randint(1, 50) * 100, rng.randint(1, 12), rng.randint(1, 10)
    return _c(rng, (f"What is the simple interest on ${p:,} at {r}% per year for {t} years?",
                    f"If ${p:,} grows at {r}% per year compounded annually, what is it worth after {t} years?",
                    f"A shirt costs ${rng.randint(10, 90)}.{rng.randint(0, 99):02d} and tax is {r}%. "
                    f"What is the total?",
                    f"What is a {r + 10}% tip on a bill of ${rng.uniform(12, 250):.2f}?")) + _c(rng, _M_ASK)


_MATH: tuple[Template, ...] = (_m_arith, _m_percent, _m_fractions, _m_linear, _m_convert, _m_powers, _m_decimals,
                               _m_stats, _m_ratio, _m_geometry, _m_system, _m_numbers, _m_money)


# ---------------------------------------------------------------------------------------------------------
# coding
# ---------------------------------------------------------------------------------------------------------

# Tasks as infinitive phrases; _third_person turns "reverse a string" into "reverses a string".
_CODE_TASKS = (
    # strings
    "reverse a string", "check whether a string is a palindrome", "count the vowels in a string",
    "capitalize the first letter of every word in a sentence", "remove all whitespace from a string",
    "count how many times each word appears in a sentence", "check whether two strings are anagrams",
    "find the longest word in a sentence", "convert a camelCase string to snake_case",
    "truncate a string to a given length, adding an ellipsis", "check whether a string contains only digits",
    "replace every vowel in a string with an asterisk", "compress a string like 'aaabb' into 'a3b2'",
    "validate the format of a simple email address", "extract all the numbers from a string",
    # lists
    "remove duplicates from a list while keeping the original order", "return the second largest number in a list",
    "flatten a nested list", "split a list into chunks of size n", "rotate a list by k positions",
    "find the most common element in a list", "merge two sorted lists into one sorted list",
    "return the running total of a list of numbers", "find all pairs in a list that add up to a target number",
    "move all zeros in a list to the end", "return the items that appear in both of two lists",
    "sort a list of words by length", "return every other element of a list",
    # dictionaries
    "merge two dictionaries, adding the values of shared keys", "invert a dictionary so its values become keys",
    "group a list of words by their first letter", "count how often each character appears in a string",
    "sort a dictionary by its values", "find the key with the highest value in a dictionary",
    "keep only the dictionary entries whose values are above a threshold",
    "turn a list of (name, score) pairs into a dictionary", "look up a nested key in a dictionary safely",
    # files
    "count the lines in a text file", "compute the average of one column in a CSV file",
    "write a list of strings to a file, one per line", "find the longest line in a text file",
    "count the words in a text file", "print one field from a JSON file",
    "append a timestamped message to a log file", "list all files in a folder with a given extension",
    # math
    "compute the factorial of a number", "check whether a number is prime", "return the first n Fibonacci numbers",
    "compute the greatest common divisor of two numbers", "convert a temperature from Celsius to Fahrenheit",
    "sum the digits of an integer", "check whether a year is a leap year",
    "round a number to the nearest multiple of 5", "compute the average of a list while ignoring missing values",
    "convert a decimal number to binary", "generate a random password of a given length",
    # dates
    "return the number of days between two dates", "return the day of the week for a given date",
    "add a number of business days to a date", "check whether a date string is in YYYY-MM-DD format",
    "calculate a person's age from their birth date", "format a date like 'March 5, 2024'",
    "list all the Mondays in a given month", "convert a duration in seconds to hours, minutes, and seconds",
)
_CODE_LANGS = ("Python", "JavaScript")
_CODE_EXTRA = {
    "Python": ("Include type hints.", "Add a docstring.", "Don't use any imports.", "Handle empty input gracefully.",
               "Explain its time complexity.", "Add a comment to each step.", "Include a few test cases.",
               "Keep it under 15 lines.", "Use only the standard library."),
    "JavaScript": ("Use modern ES6 syntax.", "Add JSDoc comments.", "Handle empty input gracefully.",
                   "Explain its time complexity.", "Add a comment to each step.", "Include a few test cases.",
                   "Keep it under 15 lines.", "Don't use any libraries."),
}


def _third_person(phrase: str) -> str:
    verb, _, rest = phrase.partition(" ")
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        verb += "es"
    elif verb.endswith("y") and verb[-2:-1] not in "aeiou":
        verb = verb[:-1] + "ies"
    else:
        verb += "s"
    return f"{verb} {rest}"


def _code_write(rng: random.Random) -> str:
    lang, task = _c(rng, _CODE_LANGS), _c(rng, _CODE_TASKS)
    extra = _c(rng, _CODE_EXTRA[lang])
    text = _c(rng, (
        f"Write a {lang} function that {_third_person(task)}.",
        f"In {lang}, how do I {task}?",
        f"Show me how to {task} in {lang}.",
        f"Implement a {lang} function that {_third_person(task)}, and explain how it works.",
        f"What is the simplest way to {task} in {lang}? Give a short example.",
        f"Write {lang} code to {task}, then show two example calls with their output.",
        f"I need a small {lang} helper that {_third_person(task)}.",
        f"Can you write a {lang} function that {_third_person(task)}?",
    ))
    return text + (f" {extra}" if rng.random() < 0.6 else "")


def _code_compare(rng: random.Random) -> str:
    task = _c(rng, _CODE_TASKS)
    return _c(rng, (
        f"Write a function that {_third_person(task)} in both Python and JavaScript, and compare the two versions.",
        f"Give two different Python approaches to {task} and say which you prefer.",
        f"How would you test a function that {_third_person(task)}? List the edge cases.",
        f"Write a JavaScript function that {_third_person(task)}, then write the same thing in Python.",
    ))


_SQL_DEPTS = ("Sales", "Engineering", "Marketing", "Finance", "Support", "Research", "Operations")
_SQL_CATS = ("books", "electronics", "toys", "garden", "kitchen", "sports", "office supplies")
_SQL_SCHEMAS = {
    "employees": "employees(id, name, department, salary, hire_date)",
    "orders": "orders(id, customer_id, total, order_date, status)",
    "customers": "customers(id, name, city, signup_date)",
    "products": "products(id, name, category, price, stock)",
}


def _code_sql(rng: random.Random) -> str:
    dept, cat, city = _c(rng, _SQL_DEPTS), _c(rng, _SQL_CATS), _c(rng, _CITIES)
    n, k, year = rng.randint(2, 18) * 5000, rng.randint(3, 20), rng.randint(2018, 2025)
    task, tables = _c(rng, (
        (f"returns all employees in the {dept} department who earn more than {n}", ("employees",)),
        (f"finds the {k} most expensive products in the {cat} category", ("products",)),
        ("counts the employees in each department", ("employees",)),
        (f"shows the average salary per department, keeping only departments whose average is above {n}",
         ("employees",)),
        (f"returns the total order value per customer for orders placed in {year}", ("orders", "customers")),
        (f"lists customers from {city} who have never placed an order", ("customers", "orders")),
        (f"finds products with fewer than {k} items in stock", ("products",)),
        (f"counts the orders placed in each month of {year}", ("orders",)),
        ("finds the second highest salary", ("employees",)),
        (f"raises the price of every product in the {cat} category by {rng.randint(2, 25)}%", ("products",)),
        (f"lists the employees hired after {_date(rng)}, newest first", ("employees",)),
        (f"finds the {k} customers who spent the most in {year}", ("customers", "orders")),
        (f"deletes all orders with status 'cancelled' placed before {year}", ("orders",)),
        (f"shows each product category with its number of products and average price", ("products",)),
    ))
    schema = "; ".join(_SQL_SCHEMAS[t] for t in tables)
    if rng.random() < 0.25:
        q = (f"SELECT department, COUNT(*) AS staff FROM employees WHERE salary > {n} GROUP BY department "
             f"HAVING COUNT(*) > {k} ORDER BY staff DESC;")
        return _c(rng, (f"Explain what this SQL query does:\n\n{q}", f"Explain this query step by step:\n\n{q}",
                        f"What would this SQL query return, in plain English?\n\n{q}"))
    return _c(rng, (
        f"Write a SQL query that {task}. The table is {schema}.",
        f"Given the tables {schema}, write a SQL query that {task}.",
        f"Using {schema}, write a query that {task}, and explain it.",
        f"I have {schema}. What SQL query {task}?",
    ))


_SNIP_VARS = ("nums", "values", "data", "items", "scores", "prices", "ages", "points")
_SNIP_FUNCS = ("transform", "process", "shout", "flip", "helper", "convert", "tidy", "mangle")
_SNIP_WORDS = ("banana", "level", "python", "mississippi", "hello", "racecar", "bookkeeper", "teapot", "rhythm",
               "coffee", "bubble", "assessment")


def _snippet(rng: random.Random) -> tuple[str, str]:
    """A small random program: (language, code)."""
    v, f, w = _c(rng, _SNIP_VARS), _c(rng, _SNIP_FUNCS), _c(rng, _SNIP_WORDS)
    nums = ", ".join(str(rng.randint(-5, 30)) for _ in range(rng.randint(4, 7)))
    k, n = rng.randint(2, 5), rng.randint(5, 30)
    a, b, c = rng.sample(_NAMES, 3)
    return _c(rng, (
        ("Python", f"{v} = [{nums}]\ntotal = 0\nfor n in {v}:\n    if n % {k} == 0:\n        total += n\nprint(total)"),
        ("Python", f"def {f}(s):\n    return s[::-1].upper()\n\nprint({f}(\"{w}\"))"),
        ("Python", f"counts = {{}}\nfor ch in \"{w}\":\n    counts[ch] = counts.get(ch, 0) + 1\nprint(counts)"),
        ("Python", f"{v} = [x * {k} for x in range({n}) if x % 2 == 1]\nprint({v})"),
        ("Python", f"n = {n}\nsteps = 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
                   f"    steps += 1\nprint(steps)"),
        ("Python", f"scores = {{\"{a}\": {rng.randint(50, 99)}, \"{b}\": {rng.randint(50, 99)}, "
                   f"\"{c}\": {rng.randint(50, 99)}}}\nbest = max(scores, key=scores.get)\nprint(best)"),
        ("Python", f"def {f}(items):\n    result = []\n    for i in range(1, len(items)):\n"
                   f"        result.append(items[i] * {k})\n    return result\n\nprint({f}([{nums}]))"),
        ("JavaScript", f"const {v} = [{nums}];\nconst result = {v}.filter(x => x > {k}).map(x => x * 2);\n"
                       f"console.log(result);"),
        ("JavaScript", f"function {f}(str) {{\n  return str.split(\"\").reverse().join(\"\");\n}}\n"
                       f"console.log({f}(\"{w}\"));"),
        ("JavaScript", f"let count = 0;\nfor (let i = 0; i < {n}; i++) {{\n  if (i % {k} === 0) count++;\n}}\n"
                       f"console.log(count);"),
        ("JavaScript", f"const total = [{nums}].reduce((acc, x) => acc + x, 0);\nconsole.log(total);"),
        ("JavaScript", f"function {f}(arr) {{\n  let max = 0;\n  for (const x of arr) {{\n    if (x > max) max = x;\n"
                       f"  }}\n  return max;\n}}\nconsole.log({f}([{nums}]));"),
    ))


def _code_explain(rng: random.Random) -> str:
    lang, code = _snippet(rng)
    other = "JavaScript" if lang == "Python" else "Python"
    block = f"```{lang.lower()}\n{code}\n```"
    return _c(rng, (
        f"What does this {lang} code print, and why?\n\n{block}",
        f"Explain what this {lang} code does, line by line:\n\n{block}",
        f"Rewrite this {lang} code in {other}:\n\n{block}",
        f"How could this {lang} code be made shorter or clearer?\n\n{block}",
        f"Is there a bug or an edge case this {lang} code handles badly?\n\n{block}",
        f"Add comments to this {lang} code:\n\n{block}",
    ))


_CODE_CONCEPTS = {
    "Python": (("a list", "a tuple"), ("==", "is"), ("a shallow copy", "a deep copy"), ("*args", "**kwargs"),
               ("a generator", "a list comprehension"), ("a module", "a package"), ("append", "extend"),
               ("a class method", "a static method"), ("a set", "a dictionary")),
    "JavaScript": (("let", "const"), ("==", "==="), ("null", "undefined"), ("map", "forEach"),
                   ("a promise", "a callback"), ("var", "let"), ("an arrow function", "a regular function"),
                   ("localStorage", "sessionStorage")),
}
_CODE_TOPICS = ("recursion", "a hash map", "big-O notation", "a race condition", "unit testing", "a closure",
                "exception handling", "an API", "version control", "a linked list", "memoization",
                "type checking", "asynchronous code", "regular expressions", "garbage collection")


def _code_concept(rng: random.Random) -> str:
    lang = _c(rng, _CODE_LANGS)
    a, b = _c(rng, _CODE_CONCEPTS[lang])
    topic = _c(rng, _CODE_TOPICS)
    return _c(rng, (
        f"Explain the difference between {a} and {b} in {lang}.",
        f"When should I use {a} instead of {b} in {lang}? Give an example.",
        f"Explain {topic} to a beginner, with a short {lang} example.",
        f"What is {topic}? Show a tiny {lang} example.",
        f"What are common mistakes people make with {topic} in {lang}?",
    ))


_CODING: tuple[Template, ...] = (_code_write, _code_write, _code_write, _code_compare, _code_sql, _code_sql,
                                 _code_explain, _code_explain, _code_concept)


# ---------------------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------------------

_X_PRODUCTS = ("laptops", "office chairs", "standing desks", "printers", "safety helmets", "coffee machines",
               "monitors", "solar panels", "tablets", "delivery bikes", "headsets", "water filters")
_X_TITLES = ("head of operations", "chief financial officer", "project manager", "sales director",
             "procurement lead", "chief executive", "marketing manager", "engineering lead")


def _x_text(rng: random.Random) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A 2-4 sentence text and the fields (json key, description) it contains."""
    p, co, co2 = _person(rng), _company(rng), _company(rng)
    city, city2 = rng.sample(_CITIES, 2)
    (d1, d2), price, t = _date_pair(rng), _money(rng, 40, 90000), _clock(rng)
    n = rng.randint(2, 250)
    code = f"{_c(rng, 'ABCDEFGHJKLMNPRSTUVWXYZ')}{_c(rng, 'ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(100, 9999)}"
    kind = rng.randrange(15)
    if kind == 0:
        return (f"{p} from {co} placed an order for {n} {_c(rng, _X_PRODUCTS)} on {d1}. The total came to {price}, "
                f"including shipping. The items will be delivered to the company's office in {city}.",
                (("customer_name", "the customer's name"), ("company", "the company"), ("quantity", "the quantity"),
                 ("product", "the product"), ("order_date", "the order date"), ("total_price", "the total price"),
                 ("delivery_city", "the delivery city")))
    if kind == 1:
        return (f"The quarterly review between {co} and {co2} is scheduled for {d2} at {t} in {city}. {p}, "
                f"{_c(rng, _X_TITLES)} at {co}, will lead the session. Attendees should confirm by {d1}.",
                (("companies", "the companies involved"), ("date", "the meeting date"), ("time", "the time"),
                 ("city", "the city"), ("organizer", "who leads the session"), ("rsvp_deadline", "the RSVP deadline")))
    if kind == 2:
        return (f"{co} is hiring {_an(_c(rng, _W_JOBS))} for its {city} office. The position pays "
                f"{_money(rng, 30000, 140000, cents=False)} per year and includes {rng.randint(15, 35)} days of paid "
                f"vacation. Applications close on {d1}, and questions can be sent to {p}.",
                (("employer", "the employer"), ("job_title", "the job title"), ("location", "the location"),
                 ("salary", "the salary"), ("vacation_days", "the vacation days"),
                 ("deadline", "the application deadline"), ("contact", "the contact person")))
    if kind == 3:
        return (f"{p} booked {_an(_c(rng, ('single room', 'double room', 'suite', 'family room')))} at the "
                f"{_c(rng, _CO_WORDS)} Hotel in {city} from {d1} to {d2}. The nightly rate is "
                f"{_money(rng, 60, 600)}, and breakfast is {_c(rng, ('included', 'not included'))}. "
                f"The booking reference is {code}.",
                (("guest", "the guest's name"), ("hotel", "the hotel"), ("city", "the city"),
                 ("check_in", "the check-in date"), ("check_out", "the check-out date"),
                 ("nightly_rate", "the nightly rate"), ("reference", "the booking reference")))
    if kind == 4:
        return (f"Flight {code[:2]}{rng.randint(10, 999)} from {city} to {city2} departs on {d1} at {t}. Passenger "
                f"{p} is in seat {rng.randint(1, 40)}{_c(rng, 'ABCDEF')}. The ticket cost {_money(rng, 80, 2400)} and "
                f"includes one checked bag.",
                (("flight_number", "the flight number"), ("origin", "the origin"), ("destination", "the destination"),
                 ("departure_date", "the departure date"), ("departure_time", "the departure time"),
                 ("passenger", "the passenger"), ("seat", "the seat"), ("price", "the ticket price")))
    if kind == 5:
        return (f"Invoice {code} was issued by {co} to {co2} on {d1}. The amount due is {price}, payable within "
                f"{_c(rng, (14, 30, 45, 60))} days. Please quote the invoice number when paying.",
                (("invoice_number", "the invoice number"), ("issuer", "the issuer"), ("recipient", "the recipient"),
                 ("issue_date", "the issue date"), ("amount_due", "the amount due"),
                 ("payment_terms", "the payment terms")))
    if kind == 6:
        item = _c(rng, ("smart thermostat", "electric scooter", "budget laptop", "fitness tracker", "robot vacuum",
                        "e-reader"))
        return (f"On {d1}, {co} announced the {_c(rng, _CO_WORDS)} {rng.randint(2, 9)}, a new {item} priced at "
                f"{_money(rng, 49, 1999)}. It will go on sale first in {city}. \"We built it for everyday people,\" "
                f"said {p}, the company's {_c(rng, _X_TITLES)}.",
                (("company", "the company"), ("product_name", "the product name"), ("product_type", "the product type"),
                 ("price", "the price"), ("announcement_date", "the announcement date"),
                 ("launch_city", "the launch city"), ("spokesperson", "the spokesperson")))
    if kind == 7:
        event = _c(rng, ("Spring Food Festival", "Harbor Jazz Night", "Regional Science Fair", "Vintage Car Show",
                         "Open-Air Film Week", "Winter Craft Market", "City Half Marathon"))
        return (f"The {event} will take place in {city} on {d1}. Tickets cost {_money(rng, 8, 90)} for adults and "
                f"{_money(rng, 2, 20)} for children. The event is organized by {co} and starts at {t}.",
                (("event", "the event name"), ("city", "the city"), ("date", "the date"),
                 ("adult_price", "the adult ticket price"), ("child_price", "the child ticket price"),
                 ("organizer", "the organizer"), ("start_time", "the start time")))
    if kind == 8:
        return (f"A {rng.randint(1, 5)}-bedroom apartment in central {city} is listed for "
                f"{_money(rng, 150000, 1500000, cents=False)} by {co}. It has {rng.randint(35, 220)} square meters of "
                f"living space and was built in {rng.randint(1890, 2024)}. Interested buyers can contact agent {p}.",
                (("bedrooms", "the number of bedrooms"), ("city", "the city"), ("price", "the price"),
                 ("agency", "the agency"), ("area_m2", "the living space"), ("year_built", "the year built"),
                 ("agent", "the agent")))
    if kind == 9:
        return (f"Package {code}, sent by {co} from {city}, weighs {rng.randint(1, 60)}.{rng.randint(0, 9)} kg. "
                f"It left the warehouse on {d1} and is expected in {city2} by {d2}. The shipping fee was "
                f"{_money(rng, 5, 300)}.",
                (("tracking_code", "the tracking code"), ("sender", "the sender"), ("origin", "the origin city"),
                 ("destination", "the destination city"), ("weight_kg", "the weight"), ("ship_date", "the ship date"),
                 ("expected_delivery", "the expected delivery date"), ("fee", "the shipping fee")))
    if kind == 10:
        goods = _c(rng, ("steel parts", "packaging materials", "cloud services", "fresh produce", "batteries",
                         "cleaning services"))
        return (f"{co} signed a {rng.randint(1, 10)}-year contract with {co2} worth "
                f"{_money(rng, 50000, 9000000, cents=False)} on {d1}. Under the deal, {co2} will supply {goods} to "
                f"{co}'s sites in {city}. The agreement was negotiated by {p}.",
                (("buyer", "the buyer"), ("supplier", "the supplier"), ("duration_years", "the contract length"),
                 ("value", "the contract value"), ("signing_date", "the signing date"), ("goods", "what is supplied"),
                 ("negotiator", "the negotiator")))
    if kind == 11:
        return (f"{p} has an appointment with Dr. {_c(rng, _SURNAMES)} on {d1} at {t}. The clinic is in {city}, and "
                f"the visit fee is {_money(rng, 20, 300)}. Please arrive ten minutes early.",
                (("patient", "the patient"), ("doctor", "the doctor"), ("date", "the date"), ("time", "the time"),
                 ("city", "the city"), ("fee", "the fee")))
    if kind == 12:
        return (f"A table for {rng.randint(2, 12)} has been reserved under the name {p} at {_c(rng, _CO_WORDS)} "
                f"Bistro in {city} for {d1} at {t}. A deposit of {_money(rng, 10, 200)} was paid.",
                (("name", "the reservation name"), ("party_size", "the party size"), ("restaurant", "the restaurant"),
                 ("city", "the city"), ("date", "the date"), ("time", "the time"), ("deposit", "the deposit")))
    if kind == 13:
        first, last = p.split(" ")
        domain = co.split(" ")[0].lower()
        return (f"Thanks again for your help this week.\n\nBest regards,\n{p}\n{_cap(_c(rng, _X_TITLES))}, {co}\n"
                f"Phone: +1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}\n"
                f"Email: {first.lower()}.{last.lower()}@{domain}.com\nOffice: {city}",
                (("name", "the name"), ("title", "the job title"), ("company", "the company"),
                 ("phone", "the phone number"), ("email", "the email address"), ("office", "the office location")))
    month, units = _c(rng, _MONTHS), rng.randint(100, 90000)
    revenue = _money(rng, units * 20, units * 900, cents=False)  # consistent with a unit price of $20-$900
    reason = _c(rng, ("a new ad campaign", "lower prices", "faster delivery", "a holiday promotion", "better reviews"))
    return (f"In {month} {rng.randint(2019, 2025)}, {co} sold {units:,} "
            f"{_c(rng, _X_PRODUCTS)} in {city}, up {rng.randint(2, 60)}% from the month before. Revenue reached "
            f"{revenue}. Regional manager {p} credited the growth to {reason}.",
            (("company", "the company"), ("period", "the month and year"), ("units_sold", "the units sold"),
             ("product", "the product"), ("city", "the city"), ("growth_percent", "the growth"),
             ("revenue", "the revenue"), ("manager", "the manager")))


def _extraction(rng: random.Random) -> str:
    text, fields = _x_text(rng)
    chosen = rng.sample(fields, rng.randint(3, len(fields)))
    keys = ", ".join(k for k, _ in chosen)
    human = _join([d for _, d in chosen])
    return _c(rng, (
        f"Extract the following fields from the text below and return them as JSON: {keys}.\n\nText: {text}",
        f"{text}\n\nFrom the text above, extract {human} as a JSON object.",
        f"Read the passage and list {human}.\n\n{text}",
        f"Return a JSON object with the keys {keys} based on this text:\n\n{text}",
        f"Text:\n{text}\n\nPull out {human} and present them as a bulleted list.",
        f"List every date and every amount of money mentioned in the following text.\n\n{text}",
        f"Extract all the names of people and organizations from this text as two lists.\n\n{text}",
        f"Turn the following text into a JSON record with the fields {keys}. Use null for anything that is not "
        f"mentioned.\n\n{text}",
        f"Here is a message:\n\"\"\"\n{text}\n\"\"\"\nWhat are {human}? Answer as \"field: value\" lines.",
        f"Fill in this template from the text.\n{chr(10).join(k + ': ' for k, _ in chosen)}\n\nText: {text}",
        f"Identify {human} in the text below. Reply with JSON only.\n\n{text}",
        f"Extract the key facts from this text as a list of short bullet points.\n\n{text}",
    ))


_EXTRACTION: tuple[Template, ...] = (_extraction,)


# ---------------------------------------------------------------------------------------------------------
# stem
# ---------------------------------------------------------------------------------------------------------

_STEM: dict[str, tuple[str, ...]] = {
    "physics": ("Newton's first law", "momentum", "friction", "gravity", "electric current", "magnetism",
                "the Doppler effect", "refraction of light", "kinetic and potential energy", "sound waves",
                "pressure", "buoyancy", "thermal conduction", "centripetal force", "static electricity", "entropy",
                "nuclear fission", "the photoelectric effect", "resonance", "terminal velocity", "inertia",
                "electromagnetic induction", "the speed of light", "torque", "heat capacity", "radioactive decay",
                "lenses and focal length", "air resistance", "work and power", "the conservation of energy"),
    "chemistry": ("chemical bonds", "the periodic table", "acids and bases", "the pH scale", "oxidation",
                  "catalysts", "chemical equilibrium", "covalent bonds", "ionic bonds", "isotopes", "combustion",
                  "solutions and solubility", "the mole", "polymers", "electrolysis", "exothermic reactions",
                  "molecular shape", "crystallization", "distillation", "rusting", "hydrogen bonds",
                  "reaction rates", "electrons and electron shells", "organic chemistry", "neutralization reactions"),
    "biology": ("photosynthesis", "cellular respiration", "DNA replication", "natural selection", "the immune system",
                "mitosis", "meiosis", "enzymes", "the nervous system", "ecosystems", "food chains", "vaccines",
                "the circulatory system", "genetic mutations", "homeostasis", "transpiration in plants",
                "symbiosis", "how muscles contract", "protein synthesis", "antibiotic resistance",
                "the human digestive system", "cell membranes", "hormones", "pollination", "biodiversity",
                "how viruses replicate", "the structure of a plant cell", "inheritance and dominant genes"),
    "computer science": ("binary numbers", "algorithms", "recursion", "how the internet works", "encryption",
                         "databases", "machine learning", "operating systems", "compilers", "sorting algorithms",
                         "computer memory", "cloud computing", "how search engines rank pages", "hash functions",
                         "public-key cryptography", "neural networks", "computer viruses", "data compression",
                         "how a CPU executes instructions", "networking protocols", "version control",
                         "the difference between RAM and storage", "graphs and shortest paths", "caching",
                         "floating-point numbers", "parallel computing"),
    "earth science": ("plate tectonics", "earthquakes", "volcanoes", "the water cycle", "the rock cycle",
                      "weathering and erosion", "ocean currents", "the greenhouse effect", "climate versus weather",
                      "hurricanes", "the layers of the atmosphere", "glaciers", "the formation of fossils",
                      "tides", "the seasons", "soil formation", "the ozone layer", "tsunamis",
                      "the carbon cycle", "cloud formation", "rainbows", "thunder and lightning",
                      "the Earth's magnetic field", "sedimentary rocks", "deserts"),
    "astronomy": ("black holes", "the life cycle of stars", "the phases of the Moon", "eclipses", "exoplanets",
                  "the Big Bang", "galaxies", "comets", "why planets orbit the Sun", "light-years",
                  "the Northern Lights", "red shift", "neutron stars", "the solar wind", "dark matter"),
    "mathematics": ("prime numbers", "probability", "the Pythagorean theorem", "derivatives", "integrals",
                    "logarithms", "vectors", "matrices", "statistical significance", "the number pi",
                    "exponential growth", "standard deviation", "infinity", "proof by induction", "fractals",
                    "the normal distribution", "imaginary numbers", "correlation versus causation"),
}
_STEM_FIELDS = tuple(_STEM)
_STEM_LAB = ("physics", "chemistry", "biology", "earth science")
_STEM_AGES = ("five", "seven", "eight", "ten", "twelve")
_STEM_SUFFIXES = ("", "", "", "", " Use simple words.", " Include a real-world example.",
                  " End with a one-sentence summary.", " Avoid jargon.", " Keep it short.",
                  " Mention one common mistake students make.", " Use a numbered list where it helps.")


def _stem(rng: random.Random) -> str:
    field = _c(rng, _STEM_FIELDS)
    concept, other = rng.sample(_STEM[field], 2)
    return _c(rng, (
        f"Explain {concept} to a {_c(rng, _STEM_AGES)}-year-old child.",
        f"Explain {concept} in one paragraph.",
        f"Explain {concept} with a concrete everyday example.",
        f"What is meant by {concept}, and why does understanding it matter?",
        f"Give a step-by-step explanation of {concept}.",
        f"How would you explain {concept} to a high school student?",
        f"Describe {concept} using an analogy.",
        f"What are common misconceptions about {concept}?",
        f"Summarize the key ideas of {concept} in three bullet points.",
        f"Compare {concept} and {other}. How are they related?",
        f"What are the real-life or technological uses of {concept}?",
        f"Explain {concept} the way an introductory university textbook would.",
        f"What simple experiment or demonstration could show {concept}?" if field in _STEM_LAB
        else f"What is a good first exercise for learning about {concept}?",
        f"Explain {concept} in under 100 words.",
        f"I'm studying {field}. Can you help me understand {concept}?",
        f"Write three quiz questions about {concept}, with answers.",
        f"What would {_an(field)} teacher say is the most important thing to understand about {concept}?",
        f"Explain {concept} to someone with no background in {field}.",
    )) + _c(rng, _STEM_SUFFIXES)


_STEM_TEMPLATES: tuple[Template, ...] = (_stem,)


# ---------------------------------------------------------------------------------------------------------
# humanities
# ---------------------------------------------------------------------------------------------------------

_H_HISTORY = ("the fall of the Western Roman Empire", "the Industrial Revolution", "the Meiji Restoration",
              "the French Revolution", "the spread of the printing press in Europe", "the Black Death",
              "the Italian Renaissance", "the American Civil War", "the Cold War", "the fall of the Berlin Wall",
              "the Age of Exploration", "the expansion of the Ottoman Empire", "the Protestant Reformation",
              "the rise of the Mongol Empire", "the abolition of slavery in the British Empire",
              "the women's suffrage movement", "the Great Depression", "the decolonization of Africa",
              "the construction of the Great Wall of China", "the collapse of the Roman Republic",
              "the Spanish conquest of the Aztec Empire", "the Scientific Revolution", "the Hundred Years' War",
              "the Space Race", "the rise of the Mughal Empire", "the Viking expansion", "the unification of Germany",
              "the Russian Revolution", "the partition of India", "the Haitian Revolution")
_H_PHILOSOPHY = ("Stoicism", "utilitarianism", "Kant's categorical imperative", "Plato's allegory of the cave",
                 "existentialism", "Confucian ethics", "the social contract", "Descartes' 'I think, therefore I am'",
                 "Aristotle's idea of virtue", "free will and determinism", "the trolley problem",
                 "Buddhist teachings on suffering", "empiricism", "the problem of induction", "nihilism",
                 "the mind-body problem", "moral relativism", "the ship of Theseus", "pragmatism", "Epicureanism")
_H_LITERATURE = ("Shakespeare's Macbeth", "Homer's Odyssey", "Don Quixote", "Jane Austen's Pride and Prejudice",
                 "Romantic poetry", "magical realism", "Greek tragedy", "the Gothic novel", "Dante's Inferno",
                 "Mary Shelley's Frankenstein", "Tolstoy's War and Peace", "the epic of Gilgamesh",
                 "Dickens's Great Expectations", "haiku as a literary form", "Moby-Dick", "the sonnet tradition",
                 "Dostoevsky's Crime and Punishment", "Grimms' Fairy Tales",
                 "modernist fiction", "The Tale of Genji")
_H_ECONOMICS = ("inflation", "comparative advantage", "opportunity cost", "supply and demand", "interest rates",
                "monopolies", "unemployment", "GDP", "tariffs", "the tragedy of the commons", "externalities",
                "central banks", "economies of scale", "price elasticity", "recessions", "minimum wage laws",
                "the gig economy", "public goods", "exchange rates", "compound interest")
_H_ART = ("Impressionism", "Cubism", "Renaissance painting", "Baroque architecture", "Surrealism",
          "Japanese woodblock prints", "Gothic cathedrals", "Abstract Expressionism", "Art Nouveau",
          "ancient Greek sculpture", "the Bauhaus", "pop art", "Byzantine mosaics", "street art",
          "Dutch Golden Age painting", "Islamic geometric art")
_H_MUSIC = ("the sonata form", "jazz improvisation", "Baroque music", "the blues", "the symphony orchestra",
            "hip-hop", "opera", "West African drumming", "the Beatles' influence on pop music", "minimalism in music",
            "the invention of recorded sound", "folk music revivals", "Indian classical ragas", "reggae",
            "the piano's development", "electronic dance music")
_H_GEOGRAPHY = ("the Sahara Desert", "the Andes", "the Amazon rainforest", "monsoons in South Asia",
                "the Nile delta", "the Himalayas", "the Great Barrier Reef", "the Mississippi River", "Siberia",
                "the Mediterranean climate", "the Rhine valley", "Iceland's volcanoes", "the Great Lakes",
                "the Mekong River", "Patagonia", "the Netherlands' fight against the sea", "the Ring of Fire",
                "the Arctic tundra", "the Alps", "the Ganges River")
_H_LEVELS = ("", "", "", "", " Answer in about 150 words.", " Write it for a high school audience.",
             " Use bullet points.", " Keep it to one paragraph.", " Mention at least one specific example.",
             " Explain it as a museum guide would.", " Include a short conclusion.", " Avoid jargon.")


def _h_history(rng: random.Random) -> str:
    x, y = rng.sample(_H_HISTORY, 2)
    return _c(rng, (f"What were the main causes of {x}?", f"What were the long-term consequences of {x}?",
                    f"Describe daily life for ordinary people during {x}.", f"Why is {x} considered important?",
                    f"Compare {x} and {y}.", f"Give a short timeline of {x}.",
                    f"What are historians still debating about {x}?", f"Who were the key figures in {x}?",
                    f"How is {x} remembered today?", f"What primary sources would help me study {x}?"))\
        + _c(rng, _H_LEVELS)


def _h_philosophy(rng: random.Random) -> str:
    x, y = rng.sample(_H_PHILOSOPHY, 2)
    return _c(rng, (f"Explain the key ideas of {x}.", f"What would a critic of {x} say?",
                    f"How could {x} help someone make a hard decision?", f"Compare {x} with {y}.",
                    f"Explain {x} using an everyday example.",
                    f"Are the ideas behind {x} still relevant today? Why or why not?"))\
        + _c(rng, _H_LEVELS)


def _h_literature(rng: random.Random) -> str:
    x, y = rng.sample(_H_LITERATURE, 2)
    return _c(rng, (f"What are the major themes of {x}?", f"Why is {x} still read today?",
                    f"How does {x} reflect the time in which it was written?",
                    f"Compare the themes of {x} and {y}.", f"Write a short study guide for {x}.",
                    f"What should a first-time reader know before reading {x}?")) + _c(rng, _H_LEVELS)


def _h_economics(rng: random.Random) -> str:
    x = _c(rng, _H_ECONOMICS)
    return _c(rng, (f"Explain {x} with an example from daily life.", f"How are ordinary households affected by {x}?",
                    f"Why do journalists pay attention to {x}?", f"Why do economists care about {x}?",
                    f"Explain {x} to someone who has never studied economics.",
                    f"What are the arguments for and against policies related to {x}?")) + _c(rng, _H_LEVELS)


def _h_art(rng: random.Random) -> str:
    x, y = rng.sample(_c(rng, (_H_ART, _H_MUSIC)), 2)
    return _c(rng, (f"What are the defining features of {x}?", f"How did {x} develop, and who shaped it?",
                    f"How is {x} different from {y}?", f"What made {x} groundbreaking in its time?",
                    f"How did {x} influence later artists?", f"How should a beginner start appreciating {x}?"))\
        + _c(rng, _H_LEVELS)


def _h_geography(rng: random.Random) -> str:
    x = _c(rng, _H_GEOGRAPHY)
    return _c(rng, (f"How have people living near {x} adapted to the local environment?",
                    f"Describe the climate and landscape of {x}.", f"What environmental challenges affect {x}?",
                    f"What would a first-time visitor notice about {x}?",
                    f"What is the importance of {x} to the surrounding region?",
                    f"What role did {x} play in history and trade?")) + _c(rng, _H_LEVELS)


def _h_cross(rng: random.Random) -> str:
    era, work = _c(rng, _H_HISTORY), _c(rng, _H_LITERATURE + _H_ART + _H_MUSIC)
    idea = _c(rng, _H_PHILOSOPHY + _H_ECONOMICS)
    return _c(rng, (f"How might ordinary people living through {era} have experienced {_c(rng, _H_ECONOMICS)}?",
                    f"Write an essay outline connecting {work} to broader ideas about {idea}.",
                    f"Suggest three discussion questions about {work} for a class.",
                    f"What can {work} teach us about the society that produced it?"))


_HUMANITIES: tuple[Template, ...] = (_h_history, _h_history, _h_philosophy, _h_literature, _h_economics, _h_art,
                                     _h_geography, _h_cross)


# ---------------------------------------------------------------------------------------------------------
# translation
# ---------------------------------------------------------------------------------------------------------
# Sentences are assembled from pieces whose grammar is fixed per slot: subjects carry their number, verbs carry
# pre-conjugated forms, objects are already declined, so every combination stays grammatical. Present-tense
# pieces and past-tense pieces are never mixed.

# German: verb = (3rd sg, 3rd pl, past participle with "haben", objects in the accusative)
_DE_SUBJ_SG = ("der Lehrer", "die Ärztin", "mein Bruder", "meine Schwester", "das Kind", "unser Nachbar",
               "die Studentin", "der Koch", "Anna", "Thomas", "die Polizistin", "der alte Mann", "meine Mutter",
               "mein Vater", "die junge Frau")
_DE_SUBJ_PL = ("die Kinder", "meine Eltern", "die Studenten", "unsere Nachbarn", "die Touristen", "wir",
               "meine Freunde")
_DE_VERBS = (
    ("liest", "lesen", "gelesen", ("ein Buch", "die Zeitung", "einen Brief", "eine lange E-Mail", "einen Roman")),
    ("kauft", "kaufen", "gekauft", ("ein Brot", "einen neuen Tisch", "frisches Obst", "eine Fahrkarte", "Blumen")),
    ("trinkt", "trinken", "getrunken", ("einen Kaffee", "ein Glas Wasser", "heißen Tee", "einen Orangensaft")),
    ("schreibt", "schreiben", "geschrieben", ("einen Brief", "eine Nachricht", "ein Gedicht", "einen Bericht")),
    ("kocht", "kochen", "gekocht", ("eine Suppe", "das Abendessen", "Nudeln mit Tomatensoße", "einen Eintopf")),
    ("besucht", "besuchen", "besucht", ("das Museum", "die Großeltern", "einen alten Freund", "den Zoo")),
    ("sucht", "suchen", "gesucht", ("den Schlüssel", "eine neue Wohnung", "den Bahnhof", "das Handy")),
    ("sieht", "sehen", "gesehen", ("einen Film", "den Sonnenuntergang", "ein Fußballspiel", "die Berge")),
    ("spielt", "spielen", "gespielt", ("Fußball", "Klavier", "Schach", "ein Kartenspiel")),
    ("isst", "essen", "gegessen", ("einen Apfel", "ein Stück Kuchen", "eine Pizza", "einen Salat")),
    ("öffnet", "öffnen", "geöffnet", ("das Fenster", "die Tür", "ein Paket", "den Brief")),
    ("lernt", "lernen", "gelernt", ("Spanisch", "ein neues Lied", "die Vokabeln", "die Regeln")),
    ("malt", "malen", "gemalt", ("ein Bild", "ein Porträt", "eine Landschaft")),
    ("wäscht", "waschen", "gewaschen", ("das Auto", "die Wäsche", "den Hund")),
    ("repariert", "reparieren", "repariert", ("das Fahrrad", "die Heizung", "den alten Stuhl")),
)
_DE_TIME_NOW = ("heute", "am Morgen", "jeden Tag", "am Wochenende", "oft", "jetzt", "am Abend", "manchmal")
_DE_TIME_PAST = ("gestern", "letzte Woche", "am Montag", "heute Morgen", "vor zwei Tagen", "letztes Jahr")
_DE_PLACES = ("im Park", "zu Hause", "in der Küche", "im Garten", "in der Stadt", "im Café")


def _de_sentence(rng: random.Random) -> str:
    plural = rng.random() < 0.35
    subj = _c(rng, _DE_SUBJ_PL if plural else _DE_SUBJ_SG)
    sg, pl, part, objs = _c(rng, _DE_VERBS)
    verb, obj, place = (pl if plural else sg), _c(rng, objs), _c(rng, _DE_PLACES)
    now, past = _c(rng, _DE_TIME_NOW), _c(rng, _DE_TIME_PAST)
    aux = "haben" if plural else "hat"
    s = _c(rng, (
        f"{_cap(subj)} {verb} {obj}.", f"{_cap(subj)} {verb} {now} {obj}.", f"{_cap(subj)} {verb} {obj} {place}.",
        f"{_cap(now)} {verb} {subj} {obj}.", f"{_cap(subj)} {verb} {now} {obj} {place}.",
        f"{_cap(subj)} {aux} {past} {obj} {part}.", f"{_cap(past)} {aux} {subj} {obj} {part}.",
        f"{_cap(subj)} {aux} {past} {place} {obj} {part}.", f"{_cap(verb)} {subj} {obj}?",
        f"Warum {verb} {subj} {now} {obj}?",
    ))
    return s


# French: verb = (3rd sg, 3rd pl, passé composé with "avoir", objects)
_FR_SUBJ_SG = ("le professeur", "le médecin", "mon frère", "ma sœur", "l'enfant", "notre voisine", "l'étudiante",
               "le cuisinier", "Marie", "Paul", "la boulangère", "mon père", "ma mère", "le vieil homme",
               "la jeune femme")
_FR_SUBJ_PL = ("les enfants", "mes parents", "les étudiants", "nos voisins", "les touristes", "mes amis")
_FR_VERBS = (
    ("lit", "lisent", "lu", ("un livre", "le journal", "une lettre", "un roman policier")),
    ("achète", "achètent", "acheté", ("du pain", "une nouvelle table", "des fruits frais", "un billet de train",
                                      "des fleurs")),
    ("boit", "boivent", "bu", ("un café", "un verre d'eau", "du thé chaud", "un jus d'orange")),
    ("écrit", "écrivent", "écrit", ("une lettre", "un message", "un poème", "un rapport")),
    ("prépare", "préparent", "préparé", ("une soupe", "le dîner", "des pâtes à la tomate", "un gâteau")),
    ("visite", "visitent", "visité", ("le musée", "la vieille ville", "un château", "la cathédrale")),
    ("cherche", "cherchent", "cherché", ("la clé", "un nouvel appartement", "la gare", "le téléphone")),
    ("regarde", "regardent", "regardé", ("un film", "le coucher du soleil", "un match de football", "les montagnes")),
    ("mange", "mangent", "mangé", ("une pomme", "un morceau de gâteau", "une pizza", "une salade")),
    ("ouvre", "ouvrent", "ouvert", ("la fenêtre", "la porte", "un colis", "la lettre")),
    ("apprend", "apprennent", "appris", ("l'espagnol", "une nouvelle chanson", "le vocabulaire")),
    ("peint", "peignent", "peint", ("un tableau", "un portrait", "un paysage")),
    ("lave", "lavent", "lavé", ("la voiture", "le linge", "le chien")),
    ("répare", "réparent", "réparé", ("le vélo", "le chauffage", "la vieille chaise")),
    ("joue", "jouent", "joué", ("au football", "du piano", "aux échecs", "aux cartes")),
)
_FR_TIME_NOW = ("aujourd'hui", "le matin", "tous les jours", "le week-end", "le soir", "ce soir")
_FR_ADVERBS = ("souvent", "parfois", "toujours")
_FR_TIME_PAST = ("hier", "la semaine dernière", "lundi dernier", "ce matin", "il y a deux jours", "l'année dernière")
_FR_PLACES = ("dans le parc", "à la maison", "dans la cuisine", "dans le jardin", "en ville", "au café")


def _fr_sentence(rng: random.Random) -> str:
    plural = rng.random() < 0.35
    subj = _c(rng, _FR_SUBJ_PL if plural else _FR_SUBJ_SG)
    sg, pl, part, objs = _c(rng, _FR_VERBS)
    verb, obj, place = (pl if plural else sg), _c(rng, objs), _c(rng, _FR_PLACES)
    now, past, adv = _c(rng, _FR_TIME_NOW), _c(rng, _FR_TIME_PAST), _c(rng, _FR_ADVERBS)
    aux = "ont" if plural else "a"
    que = "qu'" if subj[:1].lower() in "aeiouéè" else "que "  # elision before a vowel
    return _c(rng, (
        f"{_cap(subj)} {verb} {obj}.", f"{_cap(subj)} {verb} {obj} {now}.", f"{_cap(now)}, {subj} {verb} {obj}.",
        f"{_cap(subj)} {verb} {adv} {obj}.", f"{_cap(subj)} {verb} {obj} {place}.",
        f"{_cap(subj)} {aux} {part} {obj} {past}.", f"{_cap(past)}, {subj} {aux} {part} {obj}.",
        f"{_cap(subj)} {aux} {part} {obj} {place}.", f"Est-ce {que}{subj} {verb} {obj} {now} ?",
        f"{_cap(now)}, {subj} {verb} {obj} {place}.",
    ))


# Spanish: verb = (3rd sg present, 3rd pl present, 3rd sg preterite, 3rd pl preterite, objects)
_ES_SUBJ_SG = ("el profesor", "la médica", "mi hermano", "mi hermana", "el niño", "nuestra vecina", "la estudiante",
               "el cocinero", "María", "Pablo", "la panadera", "mi padre", "mi madre", "el anciano", "la joven")
_ES_SUBJ_PL = ("los niños", "mis padres", "los estudiantes", "nuestros vecinos", "los turistas", "mis amigos")
_ES_VERBS = (
    ("lee", "leen", "leyó", "leyeron", ("un libro", "el periódico", "una carta", "una novela")),
    ("compra", "compran", "compró", "compraron", ("pan", "una mesa nueva", "fruta fresca", "un billete de tren",
                                                  "flores")),
    ("bebe", "beben", "bebió", "bebieron", ("un café", "un vaso de agua", "té caliente", "un zumo de naranja")),
    ("escribe", "escriben", "escribió", "escribieron", ("una carta", "un mensaje", "un poema", "un informe")),
    ("prepara", "preparan", "preparó", "prepararon", ("una sopa", "la cena", "pasta con tomate", "un pastel")),
    ("visita", "visitan", "visitó", "visitaron", ("el museo", "el casco antiguo", "un castillo", "la catedral")),
    ("busca", "buscan", "buscó", "buscaron", ("la llave", "un piso nuevo", "la estación", "el teléfono")),
    ("ve", "ven", "vio", "vieron", ("una película", "la puesta de sol", "un partido de fútbol", "las montañas")),
    ("come", "comen", "comió", "comieron", ("una manzana", "un trozo de pastel", "una pizza", "una ensalada")),
    ("abre", "abren", "abrió", "abrieron", ("la ventana", "la puerta", "un paquete", "la carta")),
    ("aprende", "aprenden", "aprendió", "aprendieron", ("alemán", "una canción nueva", "el vocabulario")),
    ("pinta", "pintan", "pintó", "pintaron", ("un cuadro", "un retrato", "un paisaje")),
    ("lava", "lavan", "lavó", "lavaron", ("el coche", "la ropa", "al perro")),
    ("arregla", "arreglan", "arregló", "arreglaron", ("la bicicleta", "la calefacción", "la silla vieja")),
)
_ES_TIME_NOW = ("hoy", "por la mañana", "todos los días", "los fines de semana", "por la tarde", "a veces", "ahora")
_ES_TIME_PAST = ("ayer", "la semana pasada", "el lunes pasado", "anoche", "hace dos días", "el año pasado")
_ES_PLACES = ("en el parque", "en casa", "en la cocina", "en el jardín", "en el centro", "en la cafetería")


def _es_sentence(rng: random.Random) -> str:
    plural = rng.random() < 0.35
    subj = _c(rng, _ES_SUBJ_PL if plural else _ES_SUBJ_SG)
    sg, pl, psg, ppl, objs = _c(rng, _ES_VERBS)
    verb, past_verb = (pl, ppl) if plural else (sg, psg)
    obj, place, now, past = _c(rng, objs), _c(rng, _ES_PLACES), _c(rng, _ES_TIME_NOW), _c(rng, _ES_TIME_PAST)
    return _c(rng, (
        f"{_cap(subj)} {verb} {obj}.", f"{_cap(subj)} {verb} {obj} {now}.", f"{_cap(now)}, {subj} {verb} {obj}.",
        f"{_cap(subj)} {verb} {obj} {place}.", f"{_cap(subj)} {past_verb} {obj} {past}.",
        f"{_cap(past)}, {subj} {past_verb} {obj}.", f"{_cap(subj)} {past_verb} {obj} {place}.",
        f"¿{_cap(verb)} {subj} {obj} {now}?", f"{_cap(now)}, {subj} {verb} {obj} {place}.",
    ))


# English source sentences for English -> German/French requests.
_EN_SUBJ = (("the teacher", False), ("my brother", False), ("our neighbor", False), ("the doctor", False),
            ("my grandmother", False), ("the children", True), ("my parents", True), ("the tourists", True),
            ("the students", True), ("the cook", False))
_EN_VERBS = (
    ("reads", "read", "read", ("a book", "the newspaper", "a long letter")),
    ("buys", "buy", "bought", ("fresh bread", "a new table", "a train ticket", "flowers")),
    ("drinks", "drink", "drank", ("a cup of coffee", "a glass of water", "hot tea")),
    ("writes", "write", "wrote", ("a letter", "a short message", "a poem")),
    ("cooks", "cook", "cooked", ("soup", "dinner", "pasta with tomato sauce")),
    ("visits", "visit", "visited", ("the museum", "the old town", "an old friend")),
    ("watches", "watch", "watched", ("a film", "the sunset", "a football match")),
    ("opens", "open", "opened", ("the window", "the door", "a package")),
    ("repairs", "repair", "repaired", ("the bicycle", "the heating", "the old chair")),
    ("washes", "wash", "washed", ("the car", "the dog", "the laundry")),
)
_EN_TIME_NOW = ("today", "every morning", "on weekends", "in the evening", "every day")
_EN_TIME_PAST = ("yesterday", "last week", "on Monday", "two days ago", "last year")
_EN_PLACES = ("in the park", "at home", "in the kitchen", "in the garden", "in town", "at the café")
_EN_PHRASES = (
    "Could you tell me where the train station is?", "I would like to book a table for {n} at {h} o'clock.",
    "The museum is closed on Mondays.", "How much does a ticket to {city} cost?",
    "We are looking for a small hotel near the old town.", "My flight leaves at {h} o'clock tomorrow morning.",
    "Is there a pharmacy near here?", "I have lived in this city for {n} years.",
    "Please send me the documents by Friday.", "The weather will be sunny and warm this weekend.",
    "Can I pay by card?", "I'm sorry, I don't understand the question.", "The meeting starts in {n} minutes.",
    "Where can I buy a bus ticket?", "We need {n} more chairs for the party.",
    "My sister works as a nurse in {city}.", "Thank you very much for your help.",
    "The shop opens at {h} o'clock.", "I would like a coffee and a glass of water, please.",
    "How long does the journey to {city} take?",
)


def _en_sentence(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return _c(rng, _EN_PHRASES).format(n=rng.randint(2, 12), h=rng.randint(5, 11), city=_c(rng, _CITIES))
    subj, plural = _c(rng, _EN_SUBJ)
    sg, pl, past_form, objs = _c(rng, _EN_VERBS)
    obj, place = _c(rng, objs), _c(rng, _EN_PLACES)
    return _c(rng, (
        f"{_cap(subj)} {pl if plural else sg} {obj} {_c(rng, _EN_TIME_NOW)}.",
        f"{_cap(subj)} {pl if plural else sg} {obj} {place}.",
        f"{_cap(subj)} {past_form} {obj} {_c(rng, _EN_TIME_PAST)}.",
        f"{_cap(_c(rng, _EN_TIME_PAST))}, {subj} {past_form} {obj} {place}.",
    ))


_TR_SOURCES: tuple[tuple[str, Callable[[random.Random], str]], ...] = (
    ("German", _de_sentence), ("French", _fr_sentence), ("Spanish", _es_sentence))


def _tr_to_english(rng: random.Random) -> str:
    lang, make = _c(rng, _TR_SOURCES)
    text = " ".join(make(rng) for _ in range(_c(rng, (1, 1, 1, 2, 3))))
    return _c(rng, (
        f"Translate {lang} to English: {text}", f"Translate the following {lang} text into English: {text}",
        f"What does this {lang} sentence mean in English? \"{text}\"", f"Translate from {lang} to English:\n\n{text}",
        f"Please translate into English: {text}", f"{lang}: {text}\nEnglish:",
        f"How would you say this in English? {text}", f"Give an English translation of this {lang} text: {text}",
        f"Translate this {lang} text into natural English, then explain any tricky words: {text}",
        f"I got this message in {lang}: \"{text}\" What does it say?",
        f"Translate to English and keep the same tone: {text}",
        f"Translate word for word, then give a natural English version: {text}",
        f"Identify the language of this text and translate it into English: {text}",
    ))


def _tr_from_english(rng: random.Random) -> str:
    lang = _c(rng, ("German", "French", "German", "French", "Spanish"))
    text = " ".join(_en_sentence(rng) for _ in range(_c(rng, (1, 1, 2))))
    return _c(rng, (
        f"Translate into {lang}: {text}", f"How do you say \"{text}\" in {lang}?",
        f"Translate this English text into {lang}: {text}", f"English: {text}\n{lang}:",
        f"Give a {lang} translation of the following: {text}",
        f"Translate into {lang}, using the formal form of address where needed: {text}",
        f"Translate this into both German and French: {text}",
    ))


_TRANSLATION: tuple[Template, ...] = (_tr_to_english, _tr_to_english, _tr_to_english, _tr_from_english)


# ---------------------------------------------------------------------------------------------------------
# summarization
# ---------------------------------------------------------------------------------------------------------
# Each topic supplies slot values for shared news-style sentence templates.

_SUM_TOPICS = (
    dict(org="the {city} city council", event=("approved a plan to build {n} kilometers of new bike lanes",
                                               "voted to extend night bus services across the city",
                                               "announced a ban on cars in the old town on weekends"),
         metric="traffic accidents involving cyclists", roles=("the deputy mayor", "a transport official"),
         quote=("We want streets that are safe for everyone", "This is a long-term investment in our city"),
         consequence=("several downtown streets will close for construction", "bus routes will change in spring"),
         criticism="the plan will hurt small shops that depend on passing car traffic",
         background="months of complaints about congestion and air quality"),
    dict(org="{company}", event=("opened a new factory on the edge of the city",
                                 "reported record sales for the third quarter",
                                 "announced that it will cut {n} jobs over the next year"),
         metric="the company's revenue", roles=("the chief executive", "a company spokesperson"),
         quote=("We are confident about the years ahead", "These were difficult but necessary decisions"),
         consequence=("local suppliers expect more orders", "the company's share price moved sharply"),
         criticism="the company has not been open about its long-term plans",
         background="a difficult year for the whole industry"),
    dict(org="researchers at the University of {city}", event=("published a study on how sleep affects memory",
                                                               "tested a cheap new water filter in rural villages",
                                                               "tracked the diets of {n} families for two years"),
         metric="participants' test scores", roles=("the lead author", "an independent expert"),
         quote=("The results surprised even us", "More work is needed before we draw firm conclusions"),
         consequence=("schools may rethink their start times", "health agencies plan further trials"),
         criticism="the sample was too small to support such broad claims",
         background="growing public interest in the topic"),
    dict(org="the regional weather service", event=("issued flood warnings after three days of heavy rain",
                                                    "recorded the hottest summer since records began",
                                                    "warned of an unusually early frost"),
         metric="rainfall", roles=("a senior forecaster", "a local emergency coordinator"),
         quote=("People should avoid unnecessary travel", "We have not seen conditions like this in decades"),
         consequence=("several schools closed for the day", "farmers are rushing to protect their crops"),
         criticism="warnings were issued too late for some villages",
         background="a year of unusual weather across the region"),
    dict(org="the local school board", event=("introduced free breakfast for all primary school students",
                                              "approved a four-day school week as a trial",
                                              "voted to ban phones in classrooms"),
         metric="attendance", roles=("the head of the school board", "a parent representative"),
         quote=("Every child deserves a fair start to the day", "We will listen closely to families"),
         consequence=("teachers will receive extra training", "the trial will be reviewed at the end of the year"),
         criticism="the change was rushed through without enough consultation",
         background="a review of student wellbeing"),
    dict(org="the {city} Rovers", event=("won the regional football championship",
                                         "announced plans for a new {n}-seat stadium",
                                         "signed a young striker from a rival club"),
         metric="ticket sales", roles=("the team's coach", "the club president"),
         quote=("This is a dream come true for our fans", "We are building something special here"),
         consequence=("the city is planning a victory parade", "season ticket prices will rise"),
         criticism="the club is spending beyond its means", background="a decade without a major title"),
    dict(org="the {city} arts festival", event=("opened with a record number of performers",
                                                "moved its main stage to the riverside park",
                                                "announced free entry for residents under 18"),
         metric="visitor numbers", roles=("the festival director", "a local gallery owner"),
         quote=("Art should be open to everyone", "The city comes alive during these two weeks"),
         consequence=("hotels in the area are almost fully booked", "local cafés are extending their hours"),
         criticism="noise from late-night events disturbs nearby residents",
         background="a funding boost from the regional government"),
    dict(org="the regional hospital", event=("opened a new emergency wing", "began offering evening appointments",
                                             "launched a program to train {n} new nurses"),
         metric="waiting times", roles=("the hospital director", "a senior nurse"),
         quote=("Patients will feel the difference immediately", "Our staff have worked incredibly hard"),
         consequence=("ambulances should spend less time waiting outside", "a second phase is planned for next year"),
         criticism="staff shortages remain a serious problem", background="years of overcrowding"),
    dict(org="a small team of volunteer developers", event=("released a free app that helps people find food banks",
                                                            "launched an open-source tool for tracking local bus "
                                                            "delays", "built a website mapping safe cycling routes"),
         metric="daily users", roles=("one of the developers", "a community organizer"),
         quote=("We built the tool we wished existed", "The feedback from users has been amazing"),
         consequence=("the city is considering an official partnership", "other towns have asked to use the code"),
         criticism="the app still has gaps in its data", background="a weekend hackathon last year"),
)


def _summary_paragraph(rng: random.Random) -> str:
    t = _c(rng, _SUM_TOPICS)
    city = _c(rng, _CITIES)
    org = t["org"].format(city=city, company=_company(rng))
    event = _c(rng, t["event"]).format(n=rng.randint(3, 40) * _c(rng, (1, 10, 100)))
    person, role = _person(rng), _c(rng, t["roles"])
    pct, pct2, money = rng.randint(3, 45), rng.randint(2, 30), _money(rng, 0.5, 90, cents=False)
    first = _c(rng, (f"On {_date(rng)}, {org} {event}.", f"Last {_c(rng, _WEEKDAYS)}, {org} {event}.",
                     f"In a move that surprised many, {org} {event}.", f"This week, {org} {event}."))
    middle = [
        _c(rng, (f"According to official figures, {t['metric']} changed by {pct} percent over the past year.",
                 f"Figures released alongside the announcement show a {pct} percent rise in {t['metric']}.",
                 f"Between {rng.randint(2012, 2019)} and {rng.randint(2020, 2025)}, {t['metric']} fell by roughly "
                 f"{pct} percent.")),
        _c(rng, (f"\"{_c(rng, t['quote'])},\" said {person}, {role}.",
                 f"{person}, {role}, told reporters: \"{_c(rng, t['quote'])}.\"")),
        _c(rng, (f"The news follows {t['background']}.", f"It comes after {t['background']}.")),
        _c(rng, (f"Local analysts put the economic impact at around {money} million over {rng.randint(2, 6)} years.",
                 f"About {rng.randint(2, 90) * 100:,} people are expected to be directly affected.",
                 f"A survey of {rng.randint(3, 20) * 100:,} residents found that {pct2 + 40} percent welcomed "
                 f"the news.")),
        _c(rng, (f"As a result, {_c(rng, t['consequence'])}.",
                 f"Officials say that {_c(rng, t['consequence'])} as a direct consequence.")),
        _c(rng, (f"Critics argue that {t['criticism']}.", f"Not everyone is convinced: some say {t['criticism']}.")),
        _c(rng, (f"A follow-up meeting is planned for {_c(rng, _WEEKDAYS)} next week.",
                 f"Further details are expected within the next {rng.randint(2, 8)} weeks.",
                 f"Residents can share their views at a public meeting in {city} next month.")),
    ]
    # Keep the event first and the close last; shuffle the body lightly for variety.
    body, close = middle[:-1], middle[-1]
    rng.shuffle(body)
    sentences, words = [first], len(first.split())
    for s in body + [close]:
        n = len(s.split())
        if words + n > 150:
            continue
        sentences.append(s)
        words += n
    return " ".join(sentences)


def _summarization(rng: random.Random) -> str:
    p = _summary_paragraph(rng)
    while not 80 <= len(p.split()) <= 150:  # rare: resample until the length is in range
        p = _summary_paragraph(rng)
    n = rng.randint(1, 4)
    sent = "one sentence" if n == 1 else f"{n} sentences"
    return _c(rng, (
        f"Summarize the following text in {sent}:\n\n{p}", f"Summarize this article in one sentence:\n\n{p}",
        f"Write a {n}-sentence summary of the text below.\n\n{p}", f"{p}\n\nSummarize the text above in {sent}.",
        f"Give me a TL;DR of this news story:\n\n{p}",
        f"Summarize the following report as {rng.randint(2, 5)} bullet points:\n\n{p}",
        f"Summarize this text in under {_c(rng, (25, 30, 40, 50, 60))} words:\n\n{p}",
        f"Read the passage and summarize its main point and its likely consequences.\n\n{p}",
        f"Write a headline and a one-sentence summary for this article:\n\n{p}",
        f"Summarize this for a busy manager in {sent}:\n\n{p}",
        f"Explain what happened in this story in plain language for a {rng.randint(9, 14)}-year-old:\n\n{p}",
        f"What are the key facts in this text? Summarize them in {sent}.\n\n{p}",
        f"Condense this paragraph into {sent} without losing the important numbers:\n\n{p}",
    ))


_SUMMARIZATION: tuple[Template, ...] = (_summarization,)


# ---------------------------------------------------------------------------------------------------------
# qa
# ---------------------------------------------------------------------------------------------------------

_QA_COUNTRIES = ("Argentina", "Australia", "Austria", "Bangladesh", "Belgium", "Bolivia", "Brazil", "Bulgaria",
                 "Canada", "Chile", "China", "Colombia", "Croatia", "Cuba", "the Czech Republic", "Denmark", "Egypt",
                 "Estonia", "Ethiopia", "Finland", "France", "Germany", "Ghana", "Greece", "Hungary", "Iceland",
                 "India", "Indonesia", "Ireland", "Italy", "Jamaica", "Japan", "Jordan", "Kenya", "Latvia",
                 "Lithuania", "Malaysia", "Mexico", "Mongolia", "Morocco", "Nepal", "the Netherlands", "New Zealand",
                 "Nigeria", "Norway", "Pakistan", "Peru", "the Philippines", "Poland", "Portugal", "Romania",
                 "Senegal", "South Africa", "South Korea", "Spain", "Sri Lanka", "Sweden", "Switzerland", "Tanzania",
                 "Thailand", "Tunisia", "Turkey", "Uganda", "Ukraine", "Uruguay", "Vietnam", "Zambia")
_QA_INVENTIONS = ("telephone", "light bulb", "printing press", "steam engine", "airplane", "radio", "television",
                  "World Wide Web", "telescope", "microscope", "bicycle", "refrigerator", "camera", "typewriter",
                  "computer mouse", "dishwasher", "zipper", "sewing machine", "magnetic compass", "ballpoint pen",
                  "transistor", "jet engine", "safety pin", "smallpox vaccine", "barometer", "thermometer",
                  "stethoscope", "phonograph", "electric battery", "hot air balloon", "washing machine",
                  "pencil eraser", "traffic light", "contact lens", "escalator")
_QA_WHY = ("is the sky blue", "do leaves change color in autumn", "does ice float on water", "do cats purr",
           "do we have leap years", "is the ocean salty", "do onions make people cry", "does bread go stale",
           "do stars twinkle", "do people yawn", "do birds migrate", "does metal feel colder than wood",
           "do our ears pop on airplanes", "do bananas turn brown", "do we get goosebumps",
           "does the Moon seem to change shape", "do some animals hibernate", "do kettles whistle",
           "do planes leave white trails in the sky", "is Mars red", "do zebras have stripes",
           "does salt melt ice on roads", "do we get hiccups", "is grass green", "do cut apples turn brown",
           "does popcorn pop", "do humans need sleep", "is it colder at the top of a mountain",
           "do magnets attract iron", "do volcanoes erupt", "does milk go sour", "do plants need sunlight",
           "do we see lightning before we hear thunder", "do cats land on their feet", "does the sea have tides",
           "do dogs pant", "is snow white", "do onions have layers", "do some people need glasses",
           "does soap remove grease", "do rainbows form after rain", "does a spoon look bent in a glass of water",
           "do we have different blood types", "does the Sun rise in the east", "do mirrors reverse left and right")
_QA_HOW_MANY = ("legs does a spider have", "bones are in the adult human body", "players are on a soccer team",
                "planets are in our solar system", "days are in a leap year", "keys does a standard piano have",
                "hearts does an octopus have", "continents are there", "strings does a standard guitar have",
                "minutes are in a day", "teeth does an adult human usually have", "sides does a hexagon have",
                "chambers does the human heart have", "states are in the United States",
                "players are on a basketball team", "moons does Mars have", "colors are in a rainbow",
                "cards are in a standard deck", "weeks are in a year", "chromosomes do humans have",
                "squares are on a chessboard", "oceans are there on Earth", "letters are in the English alphabet",
                "wings does a bee have", "seconds are in an hour", "players are on a volleyball team",
                "time zones does Russia have", "sides does a dodecagon have", "centimeters are in a meter",
                "bytes are in a kilobyte")
_QA_TERMS = ("a haiku", "a mortgage", "a metaphor", "an allergy", "a budget", "a glacier", "a vaccine", "inflation",
             "democracy", "an ecosystem", "a pixel", "a password manager", "a carbon footprint", "a recession",
             "a comet", "a dialect", "a symphony", "an atom", "a hurricane", "a credit score", "a podcast",
             "an algorithm", "a peninsula", "a river delta", "a fjord", "a verb", "a prime number", "a thermostat",
             "a hybrid car", "jet lag", "a calorie", "a placebo", "an antonym", "a hypothesis", "a fossil",
             "an archipelago", "a palindrome", "a monopoly", "a dividend", "a referendum", "a constitution",
             "an embassy", "a tariff", "a lunar eclipse", "a watershed", "a solstice", "an equinox", "an idiom",
             "a proverb", "a firewall", "a browser cookie", "a QR code", "a sourdough starter", "a compost heap",
             "a time zone", "a spreadsheet", "a savings account", "a sonnet", "an oasis", "a rain shadow",
             "a food desert", "a startup", "a museum curator's job", "a census", "a marathon")
_QA_WORDS = ("ephemeral", "ubiquitous", "resilient", "meticulous", "serendipity", "pragmatic", "ambiguous",
             "benevolent", "candid", "diligent", "eloquent", "frugal", "gregarious", "hinder", "inevitable", "jovial",
             "lucid", "mundane", "nostalgia", "obsolete", "paradox", "quaint", "redundant", "skeptical", "tedious",
             "verbose", "whimsical", "zealous", "empathy", "procrastinate", "candor", "resilience", "tenacious",
             "mitigate", "scrutinize")
_QA_WORKS = ("Hamlet", "Pride and Prejudice", "The Odyssey", "Don Quixote", "War and Peace", "Frankenstein",
             "On the Origin of Species", "The Republic", "The Divine Comedy", "One Hundred Years of Solitude",
             "Moby-Dick", "The Little Prince", "Les Misérables", "The Art of War", "Crime and Punishment",
             "Things Fall Apart", "Romeo and Juliet", "The Wealth of Nations", "Alice's Adventures in Wonderland",
             "The Adventures of Tom Sawyer", "Jane Eyre", "The Metamorphosis", "Anne of Green Gables",
             "A Christmas Carol", "The Count of Monte Cristo")
_QA_LANDMARKS = ("the Eiffel Tower", "Machu Picchu", "the Taj Mahal", "the Colosseum", "Angkor Wat",
                 "the Sydney Opera House", "Petra", "the Great Pyramid of Giza", "Stonehenge", "the Statue of Liberty",
                 "Mount Kilimanjaro", "the Acropolis", "Chichen Itza", "the Alhambra", "Niagara Falls",
                 "the Forbidden City", "Table Mountain", "the Golden Gate Bridge", "Neuschwanstein Castle",
                 "the Blue Mosque", "Victoria Falls", "Uluru", "the Leaning Tower of Pisa", "Mount Fuji",
                 "the Parthenon")
_QA_PAIRS = (("weather", "climate"), ("a virus", "a bacterium"), ("a lake", "a pond"), ("a crocodile", "an alligator"),
             ("speed", "velocity"), ("baking soda", "baking powder"), ("a hurricane", "a typhoon"),
             ("an ape", "a monkey"), ("a frog", "a toad"), ("'affect'", "'effect'"), ("a simile", "a metaphor"),
             ("a meteor", "a meteorite"), ("mass", "weight"), ("a debit card", "a credit card"),
             ("a rabbit", "a hare"), ("a sea", "an ocean"), ("a mountain", "a hill"), ("a cold", "the flu"),
             ("a novel", "a novella"), ("jam", "jelly"), ("a turtle", "a tortoise"), ("revenue", "profit"),
             ("stocks", "bonds"), ("a city", "a town"), ("a violin", "a viola"), ("an atom", "a molecule"),
             ("nuclear fission", "nuclear fusion"), ("an herb", "a spice"), ("an emigrant", "an immigrant"),
             ("latitude", "longitude"), ("a solar eclipse", "a lunar eclipse"), ("a comet", "an asteroid"),
             ("a butterfly", "a moth"), ("a dolphin", "a porpoise"), ("a fruit", "a vegetable"))
_QA_ANIMALS = ("giraffes", "penguins", "koalas", "dolphins", "owls", "camels", "octopuses", "honeybees",
               "polar bears", "sea turtles", "hedgehogs", "flamingos", "wolves", "elephants", "bats", "sloths",
               "kangaroos", "jellyfish", "otters", "squirrels", "sharks", "hummingbirds", "tigers", "beavers", "ants",
               "pandas", "crocodiles", "snails", "parrots", "whales")
_QA_JOBS = ("a cartographer", "an actuary", "a sommelier", "a pharmacist", "a paralegal", "an architect",
            "a radiologist", "a translator", "a data scientist", "an electrician", "a museum curator",
            "a veterinarian", "a meteorologist", "an editor", "a dietitian", "a locksmith",
            "an air traffic controller", "a geologist", "a midwife", "a civil engineer", "a copywriter",
            "an auditor", "a zoologist", "a stage manager", "a park ranger", "a social worker", "a land surveyor",
            "a tailor", "an airline pilot", "a speech therapist")
_QA_PEOPLE = ("Marie Curie", "Leonardo da Vinci", "Nelson Mandela", "Ada Lovelace", "Confucius", "Galileo Galilei",
              "Frida Kahlo", "Mahatma Gandhi", "Cleopatra", "Isaac Newton", "Harriet Tubman", "Nikola Tesla",
              "Ibn Battuta", "Genghis Khan", "Florence Nightingale", "Charles Darwin", "Wolfgang Amadeus Mozart",
              "Simón Bolívar", "Rosalind Franklin", "Alan Turing", "Hypatia", "Johannes Gutenberg", "Marco Polo",
              "Queen Victoria", "Ludwig van Beethoven")
_QA_SUPERLATIVES = ("largest desert in the world", "tallest mountain in the world", "longest river in the world",
                    "deepest ocean", "largest country by area", "smallest country in the world",
                    "most widely spoken language", "hottest planet in our solar system",
                    "largest planet in our solar system", "largest animal that has ever lived",
                    "fastest land animal", "largest organ of the human body", "tallest animal", "largest island",
                    "highest waterfall in the world", "coldest continent", "driest place on Earth",
                    "largest lake in Africa", "oldest university still operating", "longest bone in the human body")
_QA_SUFFIX = ("", "", "", " Answer in one sentence.", " Keep it brief.", " Explain in simple terms.",
              " Give a short answer and one interesting fact.", " Answer in two or three sentences.")
_QA_PREFIX = ("", "", "", "Quick question: ", "I've always wondered: ", "Can you help? ")


def _qa(rng: random.Random) -> str:
    country, inv = _c(rng, _QA_COUNTRIES), _c(rng, _QA_INVENTIONS)
    a, b = _c(rng, _QA_PAIRS)
    animal, job, person = _c(rng, _QA_ANIMALS), _c(rng, _QA_JOBS), _c(rng, _QA_PEOPLE)
    term, word, work, place = _c(rng, _QA_TERMS), _c(rng, _QA_WORDS), _c(rng, _QA_WORKS), _c(rng, _QA_LANDMARKS)
    group = _c(rng, (
        (f"What is the capital of {country}?", f"What currency is used in {country}?",
         f"What languages are spoken in {country}?", f"On which continent is {country}?",
         f"What is {country} best known for?", f"Which countries border {country}?",
         f"Roughly how many people live in {country}?", f"What is a traditional dish from {country}?"),
        (f"Who invented the {inv}?", f"When was the {inv} invented?", f"How did the {inv} change everyday life?",
         f"How does the {inv} work, in simple terms?"),
        (f"Why {_c(rng, _QA_WHY)}?",),
        (f"How many {_c(rng, _QA_HOW_MANY)}?",),
        (f"What is {term}?", f"Define {term} in one sentence.", f"What is meant by {term}?",
         f"Explain what {term} is, with an example."),
        (f"What does the word \"{word}\" mean?", f"Use \"{word}\" in a sentence and explain what it means.",
         f"What is a synonym for \"{word}\"?"),
        (f"Who wrote {work}?", f"When was {work} written?", f"What is {work} about?"),
        (f"Where is {place} located?", f"When was {place} built or formed?", f"Why is {place} famous?"),
        (f"What is the difference between {a} and {b}?", f"How can you tell {a} and {b} apart?",
         f"Is {a} the same as {b}?"),
        (f"What do {animal} eat?", f"Where do {animal} live in the wild?", f"How long do {animal} usually live?",
         f"Are {animal} endangered?", f"How do {animal} communicate?"),
        (f"What does {job} do?", f"What qualifications do you need to become {job}?",
         f"What is a typical day like for {job}?"),
        (f"Who was {person}?", f"What is {person} best known for?", f"Why is {person} important in history?"),
        (f"What is the {_c(rng, _QA_SUPERLATIVES)}?", f"Which is the {_c(rng, _QA_SUPERLATIVES)}?"),
    ))
    question = _c(rng, group)
    prefix = _c(rng, _QA_PREFIX) if question.endswith("?") else ""  # prefixes only suit real questions
    return prefix + question + _c(rng, _QA_SUFFIX)


_QA: tuple[Template, ...] = (_qa,)


# ---------------------------------------------------------------------------------------------------------
# math_reasoning (grade-school word problems, 2-4 steps)
# ---------------------------------------------------------------------------------------------------------

_MR_ITEMS = (("notebooks", 1, 5), ("pens", 1, 3), ("sandwiches", 4, 9), ("movie tickets", 8, 15),
             ("packs of stickers", 2, 4), ("bottles of juice", 2, 4), ("comic books", 3, 8), ("cupcakes", 2, 5),
             ("bags of apples", 3, 6), ("plant pots", 4, 12), ("puzzle books", 5, 9), ("tennis balls", 1, 3))
_MR_GOODS = ("a bicycle", "a video game", "a pair of headphones", "a skateboard", "a new backpack",
             "concert tickets", "a camera", "a tent")
def _hours(n: int) -> str:
    return "1 hour" if n == 1 else f"{n} hours"


_MR_ASK = ("", "", " Show your reasoning step by step.", " Explain each step.", " Give the final answer at the end.")


def _mr_shop(rng: random.Random) -> str:
    n = _c(rng, _NAMES)
    (i1, lo1, hi1), (i2, lo2, hi2) = rng.sample(_MR_ITEMS, 2)
    a, b, p1, p2 = rng.randint(2, 6), rng.randint(2, 6), rng.randint(lo1, hi1), rng.randint(lo2, hi2)
    total = a * p1 + b * p2
    bill = next(x for x in (10, 20, 50, 100, 200) if x > total)
    return (f"{n} buys {a} {i1} for ${p1} each and {b} {i2} for ${p2} each, and pays with a ${bill} bill. "
            f"How much change does {n} get?")


def _mr_save(rng: random.Random) -> str:
    n, s, w = _c(rng, _NAMES), rng.randint(5, 40), rng.randint(4, 20)
    spent, good = rng.randint(5, s * w - 1), _c(rng, _MR_GOODS)
    return _c(rng, (
        f"{n} saves ${s} every week. After {w} weeks, {n} spends ${spent} on {good}. How much money is left?",
        f"{n} has ${spent} and saves ${s} more each week. How many weeks will it take to have at least "
        f"${spent + s * w + rng.randint(1, s)} for {good}?",
    ))


def _mr_bake(rng: random.Random) -> str:
    n, batches, per = _c(rng, _NAMES), rng.randint(2, 6), _c(rng, (12, 18, 20, 24, 30))
    friends = rng.randint(3, 8)
    total = batches * per
    keep = total % friends + friends * rng.randint(1, 2)  # at least one, and the rest divides evenly
    if keep >= total:
        keep = total % friends or friends
    food = _c(rng, ("cookies", "muffins", "brownies", "dumplings", "cupcakes"))
    return (f"{n} bakes {batches} batches of {food} with {per} in each batch. {n} keeps {keep} and shares the rest "
            f"equally among {friends} friends. How many {food} does each friend get?")


def _mr_travel(rng: random.Random) -> str:
    s1, h1, s2, h2 = rng.randint(4, 12) * 10, rng.randint(1, 4), rng.randint(4, 12) * 10, rng.randint(1, 3)
    stop = _c(rng, (15, 20, 30, 45))
    vehicle = _c(rng, ("A train", "A bus", "A car", "A ferry"))
    return _c(rng, (
        f"{vehicle} travels at {s1} km/h for {_hours(h1)}, then at {s2} km/h for {_hours(h2)}. How far does it go in "
        f"total?",
        f"{vehicle} travels {s1 * h1} km at {s1} km/h, stops for {stop} minutes, and then travels {s2 * h2} km at "
        f"{s2} km/h. How long does the whole trip take?",
        f"{vehicle} covers {s1 * h1} km in {_hours(h1)} and then {s2 * h2} km in {_hours(h2)}. What is its average "
        f"speed for the whole journey?",
    ))


def _mr_sale(rng: random.Random) -> str:
    item, price = _c(rng, _MR_GOODS), rng.randint(20, 400)
    d, t = _c(rng, (10, 15, 20, 25, 30, 40, 50)), _c(rng, (5, 6, 8, 10, 12))
    n = _c(rng, _NAMES)
    return _c(rng, (
        f"{_cap(item)} costs ${price}. It is on sale for {d}% off, and then {t}% sales tax is added. What is "
        f"the final price?",
        f"{n} buys {item} that normally costs ${price}, using a {d}% discount coupon and a ${rng.randint(2, 15)} "
        f"gift card. How much does {n} pay?",
        f"A store raises the price of {item} from ${price} by {t}%, then puts it on sale for {d}% off. Is the sale "
        f"price higher or lower than ${price}, and by how much?",
    ))


def _mr_reading(rng: random.Random) -> str:
    n, p, d, q, r = _c(rng, _NAMES), rng.randint(10, 40), rng.randint(3, 9), rng.randint(20, 60), rng.randint(2, 8)
    pages = p * d + q * r
    return (f"A book has {pages} pages. {n} reads {p} pages a day for {d} days, then speeds up to {q} pages a day. "
            f"How many more days does {n} need to finish the book?")


def _mr_garden(rng: random.Random) -> str:
    n, rows, per = _c(rng, _NAMES), rng.randint(3, 12), rng.randint(4, 15)
    dead, new = rng.randint(1, rows * per // 3), rng.randint(2, 30)
    plant = _c(rng, ("tomato plants", "rose bushes", "lettuce heads", "sunflowers", "pepper plants"))
    return (f"{n}'s garden has {rows} rows of {per} {plant}. {dead} of them die during a dry week, and {n} plants "
            f"{new} new ones. How many {plant} are in the garden now?")


def _mr_ages(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    young, diff, years = rng.randint(3, 30), rng.randint(2, 25), rng.randint(2, 10)
    total = (young + years) * 2 + diff
    return _c(rng, (
        f"{a} is {diff} years older than {b}. In {years} years, the sum of their ages will be {total}. "
        f"How old is {b} now?",
        f"{a} is {young + diff} and {b} is {young}. In how many years will {a} be exactly "
        f"{_c(rng, ('twice', 'one and a half times'))} as old as {b}, if ever?",
    ))


def _mr_fundraiser(rng: random.Random) -> str:
    n1, p1, n2, p2, cost = rng.randint(20, 200), rng.randint(3, 12), rng.randint(10, 120), rng.randint(5, 20), \
        rng.randint(50, 600)
    group = _c(rng, ("A school club", "A soccer team", "A choir", "A scout troop", "A community garden group"))
    return (f"{group} sells {n1} raffle tickets at ${p1} each and {n2} snack boxes at ${p2} each. The event cost "
            f"${cost} to run. How much profit did they make?")


def _mr_wages(rng: random.Random) -> str:
    n, h, w, rate, bonus = _c(rng, _NAMES), rng.randint(3, 8), rng.randint(2, 6), rng.randint(12, 30), \
        rng.randint(10, 80)
    return (f"{n} works {h} hours each weekday and {w} hours on Saturday, earning ${rate} an hour. This week {n} "
            f"also gets a ${bonus} bonus. How much does {n} earn this week?")


def _mr_fruit(rng: random.Random) -> str:
    n, apples, oranges = _c(rng, _NAMES), rng.randint(2, 15) * 3, rng.randint(2, 15) * 2
    extra = rng.randint(1, 10)
    return (f"A basket holds {apples} apples and {oranges} oranges. {n} takes a third of the apples and half of the "
            f"oranges, then adds {extra} bananas. How many pieces of fruit are in the basket now?")


def _mr_recipe(rng: random.Random) -> str:
    s = _c(rng, (2, 4, 6))
    t = s * _c(rng, (2, 3, 4)) if rng.random() < 0.7 else s // 2
    flour, eggs = _c(rng, (1, 2, 3)), s // 2 + rng.randint(0, 2)
    return (f"A recipe for {s} servings needs {flour} cups of flour and {eggs} eggs. How much flour and how many eggs "
            f"are needed for {t} servings?")


def _mr_fuel(rng: random.Random) -> str:
    use, dist, price = rng.randint(5, 10), rng.randint(2, 9) * 100, round(rng.uniform(1.2, 2.2), 2)
    n = _c(rng, _NAMES)
    return (f"{n}'s car uses {use} liters of fuel per 100 km. Fuel costs ${price:.2f} per liter. How much will "
            f"the fuel cost for a round trip of {dist} km each way?")


def _mr_pizza(rng: random.Random) -> str:
    people, each, slices = rng.randint(6, 30), rng.randint(2, 4), _c(rng, (6, 8, 10, 12))
    return (f"{people} people are coming to a party and each person will eat "
            f"{each} slices of pizza. Each pizza is cut into {slices} slices. How many pizzas should be ordered, "
            f"and how many slices will be left over?")


def _mr_class(rng: random.Random) -> str:
    total, pct = rng.randint(2, 8) * 20, _c(rng, (25, 40, 45, 50, 55, 60, 75))
    girls = total * pct // 100
    boys = total - girls
    frac = _c(rng, (("half", 2), ("a third", 3), ("a quarter", 4), ("a fifth", 5)))
    if boys % frac[1]:
        frac = ("half", 2) if boys % 2 == 0 else ("none", 1)
    tail = (f"{_cap(frac[0])} of the boys play chess. How many boys do not play chess?" if frac[1] > 1
            else "What is the difference between the number of girls and the number of boys?")
    return f"A school has {total} students, and {pct}% of them are girls. {tail}"


def _mr_marbles(rng: random.Random) -> str:
    a, b, c = rng.sample(_NAMES, 3)
    x, give = rng.randint(10, 60), rng.randint(2, 9)
    y = rng.randint(5, 40)
    if (y + give) % 2:
        y += 1
    thing = _c(rng, ("marbles", "stickers", "trading cards", "stamps", "seashells"))
    return (f"{a} has {x + give} {thing} and {b} has {y}. {a} gives {give} {thing} to {b}, and then {b} gives half of "
            f"{b}'s {thing} to {c}. How many {thing} does each person have now, assuming {c} started with none?")


def _mr_parking(rng: random.Random) -> str:
    first, nxt, hours = rng.randint(2, 6), rng.randint(1, 4), rng.randint(2, 9)
    cap = first + nxt * rng.randint(3, 8)
    n = _c(rng, _NAMES)
    return (f"A parking garage charges ${first} for the first hour and ${nxt} for each extra hour, up to a daily "
            f"maximum of ${cap}. {n} parks for {hours} hours on Monday and {hours + rng.randint(1, 5)} hours on "
            f"Tuesday. How much does {n} pay in total?")


def _math_reasoning(rng: random.Random) -> str:
    return _c(rng, _MR_BUILDERS)(rng) + _c(rng, _MR_ASK)


_MR_BUILDERS: tuple[Template, ...] = (_mr_shop, _mr_save, _mr_bake, _mr_travel, _mr_sale, _mr_reading, _mr_garden,
                                      _mr_ages, _mr_fundraiser, _mr_wages, _mr_fruit, _mr_recipe, _mr_fuel,
                                      _mr_pizza, _mr_class, _mr_marbles, _mr_parking)
_MATH_REASONING: tuple[Template, ...] = (_math_reasoning,)


# ---------------------------------------------------------------------------------------------------------
# rag
# ---------------------------------------------------------------------------------------------------------
# Passages describe fictional entities. Each fact sentence comes with the question it answers, so the question
# is always answerable from exactly one passage (distractor passages describe other entities of the same kind).

_RAG_SYL1 = ("Bren", "Cal", "Dor", "Ess", "Fal", "Gar", "Hol", "Ister", "Kel", "Lor", "Mar", "Nor", "Orr", "Pell",
             "Quen", "Ros", "Sel", "Tam", "Vel", "Wyn", "Ash", "Brack", "Cor", "Dun")
_RAG_SYL2 = ("moor", "wick", "ford", "haven", "dale", "stead", "bury", "crest", "field", "holm", "ridge", "mere")
_RAG_REGIONS = ("in the Vael Valley", "on the Corrin coast", "in the northern Ashlands", "in the Morrow Hills",
                "in the lake district of Tessary", "on the high plains of Odrin")
_RAG_INDUSTRIES = ("cheese making", "glassblowing", "wool weaving", "shipbuilding", "apple orchards",
                   "clockmaking", "pottery", "salt mining", "paper mills", "bell casting")
_RAG_ANIMALS = ("wren", "salamander", "beetle", "vole", "moth", "frog", "finch", "lizard", "bat", "snail")
_RAG_ADJ = ("copper-tailed", "striped", "blue-throated", "dusky", "silver-backed", "spotted", "long-eared",
            "amber-eyed", "crested", "pale")
_RAG_HABITATS = ("marshes", "cloud forests", "limestone caves", "alpine meadows", "mangrove swamps",
                 "sand dunes", "river gorges")
_RAG_DIETS = ("small insects", "seeds and berries", "algae", "fallen fruit", "worms and larvae", "flower nectar")
_RAG_DEVICES = (("seed drill", "help farmers plant seeds in straight rows"), ("safety lamp", "light mines safely"),
                ("water pump", "lift water from deep wells"), ("printing press", "print small newspapers quickly"),
                ("wind gauge", "measure wind speed at sea"), ("loom", "weave patterned cloth"),
                ("bread oven", "bake bread evenly for whole villages"),
                ("calculating machine", "add long columns of numbers"),
                ("sewing frame", "hold quilts steady while they were stitched"),
                ("telescope mount", "keep a telescope pointed at a moving star"))
_RAG_MATERIALS = ("brass", "oak", "cast iron", "copper and glass", "bamboo", "steel")


def _rag_name(rng: random.Random) -> str:
    return _c(rng, _RAG_SYL1) + _c(rng, _RAG_SYL2)


def _rag_town(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    name = _rag_name(rng)
    year, pop, river = rng.randint(1200, 1900), rng.randint(800, 60000), _rag_name(rng)
    industry, month, mayor = _c(rng, _RAG_INDUSTRIES), _c(rng, _MONTHS), _person(rng)
    return name, [
        (f"{name} is a small town {_c(rng, _RAG_REGIONS)}, founded in {year}.", f"When was {name} founded?"),
        (f"It has about {pop:,} residents and sits on the {river} River.", f"How many people live in {name}?"),
        (f"The town is best known for its {industry}.", f"What is {name} best known for?"),
        (f"Every {month}, it hosts a lantern festival that draws visitors from across the region.",
         f"In which month does {name} hold its festival?"),
        (f"Its current mayor, {mayor}, was elected in {rng.randint(2010, 2024)}.", f"Who is the mayor of {name}?"),
    ]


def _rag_company(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    co, founder, city = _company(rng), _person(rng), _c(rng, _CITIES)
    product = _c(rng, ("kitchen scales", "bicycle lights", "hiking boots", "school furniture", "solar lanterns",
                       "accounting software", "children's toys", "water filters"))
    return co, [
        (f"{co} was founded in {rng.randint(1950, 2020)} by {founder} in {city}.", f"Who founded {co}?"),
        (f"The company makes {product} and employs around {rng.randint(20, 9000):,} people.",
         f"How many people does {co} employ?"),
        (f"In {rng.randint(2000, 2024)}, it opened a second office in {_c(rng, _CITIES)}.",
         f"Where did {co} open its second office?"),
        (f"Its best-selling product line is called {_c(rng, _CO_WORDS)}.",
         f"What is {co}'s best-selling product line?"),
        (f"Last year, {co} reported revenue of {_money(rng, 1, 900, cents=False)} million.",
         f"What revenue did {co} report last year?"),
    ]


def _rag_species(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    name = f"{_c(rng, _RAG_ADJ)} {_rag_name(rng).lower()} {_c(rng, _RAG_ANIMALS)}"
    return f"the {name}", [
        (f"The {name} is found only in {_c(rng, _RAG_HABITATS)} {_c(rng, _RAG_REGIONS)}.",
         f"Where does the {name} live?"),
        (f"It feeds mainly on {_c(rng, _RAG_DIETS)}.", f"What does the {name} eat?"),
        (f"Adults grow to about {rng.randint(3, 40)} centimeters long and can live for up to {rng.randint(2, 25)} "
         f"years.", f"How long can the {name} live?"),
        (f"The species was first described in {rng.randint(1820, 2015)} by the naturalist {_person(rng)}.",
         f"Who first described the {name}?"),
        (f"Fewer than {rng.randint(2, 90) * 100:,} are thought to survive in the wild.",
         f"About how many individuals of the {name} survive in the wild?"),
    ]


def _rag_device(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    device, purpose = _c(rng, _RAG_DEVICES)
    name = f"{_c(rng, _SURNAMES)} {device}"
    inventor = _person(rng)
    return f"the {name}", [
        (f"The {name} was invented by {inventor} in {rng.randint(1700, 1950)}.", f"Who invented the {name}?"),
        (f"It was designed to {purpose}.", f"What was the {name} designed to do?"),
        (f"Early models were made of {_c(rng, _RAG_MATERIALS)} in a workshop in {_c(rng, _CITIES)}.",
         f"What were early models of the {name} made of?"),
        (f"When it first went on sale, it cost the equivalent of {rng.randint(2, 60)} weeks' wages.",
         f"How expensive was the {name} when it first went on sale?"),
        (f"Only {rng.randint(3, 300)} original examples are known to survive today.",
         f"How many original examples of the {name} survive today?"),
    ]


def _rag_ship(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    name = f"{_c(rng, _CO_WORDS)} {_c(rng, ('Star', 'Explorer', 'Voyager', 'Spirit', 'Dawn', 'Petrel'))}"
    captain = _person(rng)
    return f"the {name}", [
        (f"The {name} is a research vessel launched in {rng.randint(1960, 2023)}.", f"When was the {name} launched?"),
        (f"It carries a crew of {rng.randint(8, 90)} and is commanded by Captain {captain}.",
         f"Who commands the {name}?"),
        (f"Its main task is mapping the seabed of the {_rag_name(rng)} Sea.", f"What is the main task of the {name}?"),
        (f"The ship is {rng.randint(30, 140)} meters long and has a top speed of {rng.randint(10, 22)} knots.",
         f"How fast can the {name} go?"),
        (f"Its home port is {_c(rng, _CITIES)}.", f"What is the home port of the {name}?"),
    ]


_RAG_KINDS = (_rag_town, _rag_company, _rag_species, _rag_device, _rag_ship)
_RAG_HEADERS = (
    "Answer the question using the passages below.", "Use only the information in these passages to answer.",
    "Read the passages and answer the question. If the answer is not in the passages, say so.",
    "Answer the question based on the context below. Quote the sentence that supports your answer.",
    "Using the following documents, answer the question at the end.",
    "Here are some passages. Answer the question and say which passage contains the answer.",
    "Answer the question below. Rely only on the passages provided, not on outside knowledge.",
    "Read the context carefully, then answer the question in one sentence.",
    "The passages below come from an encyclopedia. Use them to answer the question.",
    "Given these search results, answer the user's question.",
    "Answer using the passages. Keep your answer short.",
    "You are a helpful assistant. Answer the question using only the passages below.",
)


def _rag_passage(rng: random.Random, kind: Callable, taken: set[str]) -> tuple[str, list[str]]:
    """One 30-60 word passage about an entity whose name is not in `taken`, and the questions it answers."""
    while True:
        name, facts = kind(rng)
        picked = [facts[0]] + rng.sample(facts[1:], rng.randint(2, 3))
        text = " ".join(s for s, _ in picked)
        if name not in taken and 30 <= len(text.split()) <= 60:
            taken.add(name)
            return text, [q for _, q in picked]


def _rag(rng: random.Random) -> str:
    kind = _c(rng, _RAG_KINDS)
    n, taken = rng.randint(2, 3), set()
    # Mostly same-kind distractors (harder), sometimes a mix.
    passages = [_rag_passage(rng, kind if rng.random() < 0.7 else _c(rng, _RAG_KINDS), taken) for _ in range(n)]
    target = rng.randrange(n)
    question = _c(rng, passages[target][1])
    label = _c(rng, ("Passage {i}: ", "[{i}] ", "Document {i}: "))
    body = "\n".join(label.format(i=i + 1) + text for i, (text, _) in enumerate(passages))
    header = _c(rng, _RAG_HEADERS)
    if rng.random() < 0.2:
        return f"{body}\n\nQuestion: {question}\n\n{header}"
    return f"{header}\n\n{body}\n\nQuestion: {question}"


_RAG: tuple[Template, ...] = (_rag,)


# ---------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------

_GENERATORS: dict[str, tuple[Template, ...]] = {
    "writing": _WRITING,
    "roleplay": _ROLEPLAY,
    "reasoning": _REASONING,
    "math": _MATH,
    "coding": _CODING,
    "extraction": _EXTRACTION,
    "stem": _STEM_TEMPLATES,
    "humanities": _HUMANITIES,
    "translation": _TRANSLATION,
    "summarization": _SUMMARIZATION,
    "qa": _QA,
    "math_reasoning": _MATH_REASONING,
    "rag": _RAG,
}


def generate_prompts(count: int, seed: int = 0) -> list[dict]:
    """Return `count` distinct prompts, each {"category": str, "prompt": str}, deterministic for a given seed,
    spread evenly (round-robin) over CATEGORIES. Raise ValueError if count exceeds what the bank can make distinct."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    per_category = -(-count // len(CATEGORIES))
    if per_category > MAX_PER_CATEGORY:
        raise ValueError(f"count={count} exceeds the bank's capacity of {MAX_PER_CATEGORY * len(CATEGORIES)} "
                         f"distinct prompts ({MAX_PER_CATEGORY} per category)")
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts: list[dict] = []
    for i in range(count):
        category = CATEGORIES[i % len(CATEGORIES)]
        templates = _GENERATORS[category]
        for _ in range(_ATTEMPTS_PER_PROMPT):
            prompt = _c(rng, templates)(rng)
            if len(prompt) <= MAX_PROMPT_CHARS and prompt not in seen:
                break
        else:  # template space effectively exhausted for this category
            raise ValueError(f"could not find a new distinct {category!r} prompt after {_ATTEMPTS_PER_PROMPT} tries "
                             f"(count={count}, seed={seed})")
        seen.add(prompt)
        prompts.append({"category": category, "prompt": prompt})
    return prompts
