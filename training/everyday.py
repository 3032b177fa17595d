"""Everyday sentences beyond the demo's domain, for the end-of-turn detector (training/turn_end.py): what people
say to a home assistant (questions, questions inside a request, requests, statements, greetings), so that the
detector learns when a sentence is complete and not only when a demo question is.

`everyday_sentences()` -> {group: {"train": [...], "test": [...]}}. The test side holds out whole sentence frames
(the embedded-question prefixes "can you tell me" and "please tell me" occur only in test), clauses and
sentences; no benchmark's question (benchmarks/bench_listen.py) is a training sentence (tests/test_turn_end.py).
"""

from __future__ import annotations

# "<prefix> <clause>": a question inside a request; the clause ends in its verb ("where the station is")
TRAIN_PREFIXES = ["do you know", "could you tell me", "i want to know", "i wonder", "tell me", "would you tell me",
                  "i would like to know", "do you remember"]
TEST_PREFIXES = ["can you tell me", "please tell me"]
TRAIN_CLAUSES = ["where the station is", "how old you are", "what your name is", "when the shop opens",
                 "why the sky is blue", "how far the moon is", "which room you are in", "what the weather is like",
                 "who wrote this song", "where my keys are", "what day it is", "how much this costs",
                 "what the time is", "who is at the door", "what you can do", "how tall the tower is",
                 "where the kids are", "what ten times four is", "how long the film is", "whether it will rain",
                 "what seven minus two is", "where you live", "who made you", "what that noise was"]
TEST_CLAUSES = ["who you are", "what two plus six is", "where the bus stop is", "how warm it is outside",
                "what the news says", "when the train leaves"]

# wh-questions and yes/no questions, asked straight
TRAIN_QUESTIONS = ["how are you today", "where are my glasses", "who is coming to dinner", "what is on the radio",
                   "when does the shop open", "how old are you", "why is the door open", "which way is north",
                   "how far is the station", "what should i cook tonight", "is it going to rain",
                   "are you still there", "did you hear that", "can you hear me", "what is the weather like",
                   "how much does it cost", "where is the nearest pharmacy", "who won the game last night",
                   "what does this word mean", "how many people live here", "is the oven still on",
                   "are the windows closed", "what is your favourite colour", "where did i put my phone",
                   "how long will it take", "what are we doing tomorrow", "is dinner ready", "why is it so loud",
                   "how do you spell necessary", "what song is this"]
TEST_QUESTIONS = ["what time is it now", "how is the traffic", "where is the remote", "is anyone home",
                  "what is for lunch today", "why is the baby crying"]

# requests and commands outside the robot's vocabulary
TRAIN_REQUESTS = ["please close the door", "open the window a little", "bring me a glass of water",
                  "let me know when it is ready", "wait for me here", "come over here", "follow me to the garage",
                  "play some quiet music", "read me the news", "set a timer for ten minutes",
                  "remind me to call my sister", "call my brother", "take the rubbish out", "feed the cat",
                  "check the front door", "water the plants in the hall", "wake me up at seven",
                  "find my phone please", "put the kettle on", "show me the way out", "say that again",
                  "speak a bit louder", "tell me a story", "give me a minute", "add milk to the shopping list"]
TEST_REQUESTS = ["please lock the back door", "pass me the salt", "tidy up the toys", "close the curtains"]

# statements
TRAIN_STATEMENTS = ["i am hungry", "it is cold in here", "the door is open", "my name is anna", "i need some help",
                    "that is not right", "i like this song", "the kids are asleep", "we are out of milk",
                    "the light is too bright", "i will be back in an hour", "the cat wants to go out",
                    "my head hurts a bit", "it smells like rain", "the guests arrive at six", "i lost my keys again",
                    "the floor is wet", "you are very helpful", "i do not understand", "that was funny"]
TEST_STATEMENTS = ["i am tired", "the tea is cold", "my back hurts", "we need more bread"]

# greetings and thanks (two words or more: the detector's examples need a word to cut after)
TRAIN_GREETINGS = ["good night", "hello robot", "hey robot", "thank you", "thanks a lot", "see you later",
                   "bye bye", "nice to meet you", "good morning robot", "hello again", "thank you very much",
                   "how are you doing", "hey you", "good evening robot", "see you tomorrow"]
TEST_GREETINGS = ["thanks robot", "good day", "hello everyone", "see you soon"]


def everyday_sentences() -> dict[str, dict[str, list[str]]]:
    """group -> {"train": sentences, "test": sentences} (lower case, no punctuation; disjoint)."""
    groups = {
        "everyday_embedded": {"train": [f"{p} {c}" for p in TRAIN_PREFIXES for c in TRAIN_CLAUSES],
                              "test": [f"{p} {c}" for p in TEST_PREFIXES for c in TEST_CLAUSES]},
        "everyday_question": {"train": TRAIN_QUESTIONS, "test": TEST_QUESTIONS},
        "everyday_request": {"train": TRAIN_REQUESTS, "test": TEST_REQUESTS},
        "everyday_statement": {"train": TRAIN_STATEMENTS, "test": TEST_STATEMENTS},
        "everyday_greeting": {"train": TRAIN_GREETINGS, "test": TEST_GREETINGS},
    }
    return {name: {split: list(texts) for split, texts in group.items()} for name, group in groups.items()}
