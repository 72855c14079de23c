// Runs the reference GPT-2 encoder (the npm package gpt-3-encoder, a port of OpenAI's
// encoder.py, with Python's whitespace in its regex: gpt2_python_regex.js) for the C++
// differential tests.
//
//   node gpt2_reference.js PACKAGE_DIR encode HEX_LINES OUT
//       each input line is a text as hex bytes; the bytes are decoded the way the browser and
//       Node decode UTF-8 (TextDecoder: ill-formed parts become U+FFFD, a BOM is kept) and the
//       ids are written one line per text, space-separated.
//   node gpt2_reference.js PACKAGE_DIR pieces HEX_LINES OUT
//       the same texts split by the reference's pre-tokenisation regex (Encoder.js's, with
//       Python's \s): one line per text, the UTF-8 byte length of each piece.
//   node gpt2_reference.js PACKAGE_DIR encode-file TEXT_FILE OUT
//       ids of a whole (large) UTF-8 file, space-separated on one line; prints MB/s to stderr.
//
// The reference's encode() appends with Array.concat, which is quadratic in the number of
// tokens, so large files are encoded in chunks cut after a "\n" that has no whitespace on
// either side. Such a cut never changes the pre-tokenisation: the "\n" is a piece of its own
// either way (its run has length one, and the next piece starts at a non-space).
'use strict';
const fs = require('fs');
const path = require('path');

const [packageDir, mode, input, output] = process.argv.slice(2);
if (!packageDir || !mode || !input || !output) {
  console.error('usage: node gpt2_reference.js PACKAGE_DIR encode|pieces|encode-file INPUT OUTPUT');
  process.exit(2);
}
const encoder = require('./gpt2_python_regex.js').loadEncoder(packageDir);
const decoder = new TextDecoder('utf-8', {ignoreBOM: true});

function readHexLines(file) {
  return fs.readFileSync(file, 'utf8').split('\n').filter((line, i, all) => i < all.length - 1 || line)
      .map(line => decoder.decode(Buffer.from(line, 'hex')));
}

function isSpace(ch) { return encoder.isSpace(ch); }

function encodeLarge(text) {
  const out = [];
  let start = 0;
  for (let i = 1; i + 1 < text.length; i++) {
    if (text[i] === '\n' && !isSpace(text[i - 1]) && !isSpace(text[i + 1]) && i + 1 - start >= 4096) {
      for (const id of encoder.encode(text.slice(start, i + 1))) out.push(id);
      start = i + 1;
    }
  }
  for (const id of encoder.encode(text.slice(start))) out.push(id);
  return out;
}

if (mode === 'encode') {
  const lines = readHexLines(input).map(text => encoder.encode(text).join(' '));
  fs.writeFileSync(output, lines.join('\n') + '\n');
} else if (mode === 'pieces') {
  const pat = encoder.pat;
  const utf8 = new TextEncoder();
  const lines = readHexLines(input).map(
      text => Array.from(text.matchAll(pat), m => utf8.encode(m[0]).length).join(' '));
  fs.writeFileSync(output, lines.join('\n') + '\n');
} else if (mode === 'encode-file') {
  const bytes = fs.readFileSync(input);
  const text = decoder.decode(bytes);
  const t0 = process.hrtime.bigint();
  const ids = encodeLarge(text);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  fs.writeFileSync(output, ids.join(' ') + '\n');
  console.error(`reference: ${(bytes.length / 1e6).toFixed(2)} MB, ${ids.length} tokens in ` +
                `${seconds.toFixed(2)} s: ${(bytes.length / 1e6 / seconds).toFixed(2)} MB/s, ` +
                `${(ids.length / seconds / 1e6).toFixed(3)} M tokens/s`);
} else {
  console.error('unknown mode ' + mode);
  process.exit(2);
}
