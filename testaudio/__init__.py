"""Synthetic audio with known answers, for the tests, the demo and the benchmarks.

`synth` renders a small band with a known tempo, key, metre and tuning; `sung` sings generated
lyrics with espeak-ng and mixes them over music; `song_forms` strings sections into pop song
forms with known boundaries; `render_midi` plays short General-MIDI pieces (solo piano, drums and
synths) through FluidSynth's real instrument samples. Nothing here is a stage: no corpus, no
songmill layer imported, so any layer above `model` that needs test audio (train's prepared toy
corpus, flows' demo) may use it.
"""
