#!/usr/bin/env python3
"""Writes the confidence-escalation task set: short questions with checkable
answers (arithmetic, unit conversions, capitals, short facts), one JSON object
per line: {"id", "kind", "question", "answers", "numeric"}.

A numeric item is right when the last number in the answer equals
`answers[0]` (or a word alias appears); a text item when one of `answers` appears in the answer as a
whole word (case-insensitive). Deterministic: the same file on every run.

    python3 scripts/escalation/make_tasks.py > benchmarks/escalation/tasks.jsonl
"""
import json
import random

rng = random.Random(20261201)
items = []


def add(kind, question, answers, numeric):
    """Adds an item unless its question is already in the set."""
    if any(i["question"] == question for i in items):
        return False
    items.append({
        "id": f"{kind}-{sum(1 for i in items if i['kind'] == kind):03d}",
        "kind": kind,
        "question": question,
        "answers": [str(a) for a in answers],
        "numeric": numeric,
    })
    return True


def draw(count, make):
    """`count` distinct items from `make()` -> (kind, question, answers, numeric)."""
    made = 0
    while made < count:
        made += add(*make())


# Arithmetic: 210 distinct items, from easy to harder.
def plus(lo, hi):
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return "arithmetic", f"What is {a} + {b}?", [a + b], True


def minus():
    a = rng.randint(10, 99)
    b = rng.randint(1, a)
    return "arithmetic", f"What is {a} - {b}?", [a - b], True


def times(lo, hi, blo, bhi):
    a, b = rng.randint(lo, hi), rng.randint(blo, bhi)
    return "arithmetic", f"What is {a} times {b}?", [a * b], True


draw(50, lambda: plus(1, 9))
draw(50, lambda: plus(10, 99))
draw(40, minus)
draw(40, lambda: times(2, 9, 2, 9))
draw(30, lambda: times(11, 30, 3, 9))

# Unit conversions: 120 distinct items.
conversions = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("feet", "inches", 12),
    ("weeks", "days", 7),
    ("liters", "milliliters", 1000),
    ("dozen eggs", "eggs", 12),
    ("years", "months", 12),
    ("centimeters", "millimeters", 10),
]


def convert():
    src, dst, factor = rng.choice(conversions)
    x = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13])  # never 10: an example uses it
    return "units", f"How many {dst} are in {x} {src}?", [x * factor], True


draw(120, convert)

capitals = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("United Kingdom", "London"), ("Ireland", "Dublin"),
    ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Austria", "Vienna"),
    ("Switzerland", "Bern"), ("Poland", "Warsaw"), ("Czech Republic", "Prague"),
    ("Hungary", "Budapest"), ("Greece", "Athens"), ("Sweden", "Stockholm"),
    ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
    ("Iceland", "Reykjavik"), ("Russia", "Moscow"), ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"),
    ("Belarus", "Minsk"), ("Turkey", "Ankara"), ("Egypt", "Cairo"),
    ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"),
    ("Libya", "Tripoli"), ("Nigeria", "Abuja"), ("Kenya", "Nairobi"),
    ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"), ("Senegal", "Dakar"),
    ("Uganda", "Kampala"), ("Tanzania", "Dodoma"), ("Zimbabwe", "Harare"),
    ("Zambia", "Lusaka"), ("Angola", "Luanda"), ("Mali", "Bamako"),
    ("Sudan", "Khartoum"), ("Somalia", "Mogadishu"), ("Rwanda", "Kigali"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("South Korea", "Seoul"),
    ("North Korea", "Pyongyang"), ("India", "New Delhi"), ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Sri Lanka", "Colombo"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"), ("Singapore", "Singapore"),
    ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"), ("Mongolia", "Ulaanbaatar"),
    ("Afghanistan", "Kabul"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"),
    ("Israel", "Jerusalem"), ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"),
    ("Kuwait", "Kuwait City"), ("Oman", "Muscat"), ("Yemen", "Sanaa"),
    ("United Arab Emirates", "Abu Dhabi"), ("Kazakhstan", "Astana"),
    ("Uzbekistan", "Tashkent"), ("Georgia (the country)", "Tbilisi"),
    ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"), ("Canada", "Ottawa"),
    ("United States", "Washington"), ("Mexico", "Mexico City"), ("Cuba", "Havana"),
    ("Jamaica", "Kingston"), ("Guatemala", "Guatemala City"), ("Honduras", "Tegucigalpa"),
    ("Nicaragua", "Managua"), ("Costa Rica", "San Jose"), ("Panama", "Panama City"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Ecuador", "Quito"),
    ("Peru", "Lima"), ("Bolivia", "Sucre"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion"),
    ("Brazil", "Brasilia"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Fiji", "Suva"), ("Papua New Guinea", "Port Moresby"), ("Madagascar", "Antananarivo"),
    ("South Africa", "Pretoria"), ("Cameroon", "Yaounde"), ("Luxembourg", "Luxembourg"),
    ("Malta", "Valletta"), ("Cyprus", "Nicosia"), ("Albania", "Tirana"),
    ("Moldova", "Chisinau"),
]
aliases = {"Kyiv": ["Kiev"], "Washington": ["Washington, D.C."], "Sanaa": ["Sana'a"],
           "Bogota": ["Bogotá"], "San Jose": ["San José"], "Asuncion": ["Asunción"],
           "Brasilia": ["Brasília"], "Yaounde": ["Yaoundé"], "Reykjavik": ["Reykjavík"],
           "Astana": ["Nur-Sultan"], "Sucre": ["La Paz"], "Pretoria": ["Cape Town"],
           "Jerusalem": ["Tel Aviv"], "Ulaanbaatar": ["Ulan Bator"],
           "Chisinau": ["Chișinău"], "Bern": ["Berne"]}
for country, city in capitals:
    add("capitals", f"What is the capital of {country}?", [city] + aliases.get(city, []), False)

facts = [
    ("How many legs does a spider have?", ["8", "eight"], True),
    ("How many legs does an insect have?", ["6", "six"], True),
    ("How many days are in a week?", ["7", "seven"], True),
    ("How many months are in a year?", ["12", "twelve"], True),
    ("How many days are in a leap year?", ["366"], True),
    ("How many hours are in a day?", ["24"], True),
    ("How many minutes are in an hour?", ["60", "sixty"], True),
    ("How many sides does a triangle have?", ["3", "three"], True),
    ("How many sides does a square have?", ["4", "four"], True),
    ("How many sides does a hexagon have?", ["6", "six"], True),
    ("How many sides does an octagon have?", ["8", "eight"], True),
    ("How many continents are there?", ["7", "seven"], True),
    ("How many planets are in the Solar System?", ["8", "eight"], True),
    ("How many players are on a soccer team on the field?", ["11", "eleven"], True),
    ("How many strings does a standard guitar have?", ["6", "six"], True),
    ("How many keys does a standard piano have?", ["88"], True),
    ("How many bones are in the adult human body?", ["206"], True),
    ("How many teeth does an adult human usually have?", ["32"], True),
    ("How many hearts does an octopus have?", ["3", "three"], True),
    ("How many wheels does a bicycle have?", ["2", "two"], True),
    ("At what temperature in Celsius does water boil at sea level?", ["100"], True),
    ("At what temperature in Celsius does water freeze?", ["0", "zero"], True),
    ("In what year did World War II end?", ["1945"], True),
    ("In what year did World War I begin?", ["1914"], True),
    ("In what year did humans first land on the Moon?", ["1969"], True),
    ("In what year did the Berlin Wall fall?", ["1989"], True),
    ("In what year did Columbus first reach the Americas?", ["1492"], True),
    ("How many cents are in a dollar?", ["100"], True),
    ("How many colors are in a rainbow?", ["7", "seven"], True),
    ("How many zeros are in one million?", ["6", "six"], True),
    ("What is the chemical symbol for gold?", ["Au"], False),
    ("What is the chemical symbol for silver?", ["Ag"], False),
    ("What is the chemical symbol for iron?", ["Fe"], False),
    ("What is the chemical symbol for sodium?", ["Na"], False),
    ("What is the chemical symbol for oxygen?", ["O"], False),
    ("What is the chemical symbol for hydrogen?", ["H"], False),
    ("What is the chemical symbol for carbon?", ["C"], False),
    ("What is the chemical symbol for potassium?", ["K"], False),
    ("What is the chemical formula of water?", ["H2O"], False),
    ("What gas do plants absorb from the air?", ["carbon dioxide", "CO2"], False),
    ("What gas do humans need to breathe to live?", ["oxygen"], False),
    ("What is the largest planet in the Solar System?", ["Jupiter"], False),
    ("What is the closest planet to the Sun?", ["Mercury"], False),
    ("Which planet is known as the Red Planet?", ["Mars"], False),
    ("Which planet has the most famous rings?", ["Saturn"], False),
    ("What is the closest star to Earth?", ["Sun", "the Sun"], False),
    ("What is the natural satellite of Earth called?", ["Moon", "the Moon"], False),
    ("What is the largest ocean on Earth?", ["Pacific"], False),
    ("What is the longest river in the world?", ["Nile", "Amazon"], False),
    ("What is the tallest mountain in the world?", ["Everest"], False),
    ("What is the largest desert in the world?", ["Sahara", "Antarctica", "Antarctic"], False),
    ("What is the largest country by area?", ["Russia"], False),
    ("What is the most spoken language in Brazil?", ["Portuguese"], False),
    ("What language is mainly spoken in Mexico?", ["Spanish"], False),
    ("What language is mainly spoken in Germany?", ["German"], False),
    ("What is the currency of Japan?", ["yen"], False),
    ("What is the currency of the United Kingdom?", ["pound", "sterling"], False),
    ("What is the currency of the United States?", ["dollar"], False),
    ("What color is the sky on a clear day?", ["blue"], False),
    ("What color are ripe bananas?", ["yellow"], False),
    ("What color is grass?", ["green"], False),
    ("What color do you get by mixing blue and yellow?", ["green"], False),
    ("What color do you get by mixing red and white?", ["pink"], False),
    ("What is the largest mammal?", ["blue whale", "whale"], False),
    ("What is the fastest land animal?", ["cheetah"], False),
    ("What animal is known as the king of the jungle?", ["lion"], False),
    ("What is the tallest animal?", ["giraffe"], False),
    ("What do bees make?", ["honey"], False),
    ("What is frozen water called?", ["ice"], False),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"], False),
    ("Who painted the Mona Lisa?", ["Leonardo", "da Vinci"], False),
    ("Who developed the theory of relativity?", ["Einstein"], False),
    ("Who was the first President of the United States?", ["Washington"], False),
    ("Who discovered penicillin?", ["Fleming"], False),
    ("Who proposed the theory of evolution by natural selection?", ["Darwin"], False),
    ("What is the hardest natural substance?", ["diamond"], False),
    ("What organ pumps blood through the body?", ["heart"], False),
    ("What organ do humans use to breathe?", ["lungs", "lung"], False),
    ("What is the boiling point of water in Fahrenheit?", ["212"], True),
    ("What is the square root of 81?", ["9", "nine"], True),
    ("What is the square root of 144?", ["12", "twelve"], True),
    ("What is 10 squared?", ["100"], True),
    ("What is half of 50?", ["25"], True),
    ("What is a quarter of 100?", ["25"], True),
    ("What is the first letter of the English alphabet?", ["A"], False),
    ("What is the opposite of hot?", ["cold"], False),
    ("What is the opposite of up?", ["down"], False),
    ("What is the plural of mouse?", ["mice"], False),
    ("What season comes after winter?", ["spring"], False),
]
for q, answers, numeric in facts:
    add("facts", q, answers, numeric)

for item in items:
    print(json.dumps(item, ensure_ascii=False))
