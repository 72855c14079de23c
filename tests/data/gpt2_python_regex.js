// The reference GPT-2 encoder (the npm package gpt-3-encoder, a port of OpenAI's encoder.py) with
// its pre-tokenisation regex given Python's whitespace: OpenAI's encoder.py, Megatron's
// gpt2_tokenization.py and Hugging Face's GPT2Tokenizer all split with Python's `regex` module,
// whose \s is Unicode's White_Space (it has U+0085 and not U+FEFF), where JavaScript's \s has
// U+FEFF and not U+0085. Everything else is the package's own code, loaded from its file.
'use strict';
const fs = require('fs');
const path = require('path');
const Module = require('module');

// Python regex's \s (regex 2026.5.9: every code point it matches, enumerated), as class content.
const WHITE_SPACE = '\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';

// The regex source of Encoder.js's `const pat = /.../gu` with \s and \S spelled out as Python's.
function pythonPatternSource(encoderSource) {
  const m = encoderSource.match(/^const pat = (\/.*\/[a-z]*)\s*$/m);
  if (!m) throw new Error('cannot find the regex in Encoder.js');
  return m[1].replace('[^\\s', '[^' + WHITE_SPACE).replace(/\\S/g, '[^' + WHITE_SPACE + ']')
      .replace(/\\s/g, '[' + WHITE_SPACE + ']');
}

// {encode, decode, pat, isSpace}: the package's encoder compiled from its file with that regex.
function loadEncoder(packageDir) {
  const file = path.join(packageDir, 'Encoder.js');
  const source = fs.readFileSync(file, 'utf8');
  const patSource = pythonPatternSource(source);
  const patched = source.replace(/^const pat = .*$/m, 'const pat = ' + patSource);
  if (patched === source) throw new Error('cannot replace the regex in Encoder.js');
  const mod = new Module(file, module);
  mod.filename = file;
  mod.paths = Module._nodeModulePaths(path.dirname(file));
  mod._compile(patched, file);
  const pat = new Function('return ' + patSource)();
  const space = new RegExp('^[' + WHITE_SPACE + ']$', 'u');
  return {encode: mod.exports.encode, decode: mod.exports.decode, pat, isSpace: ch => space.test(ch)};
}

module.exports = {loadEncoder, WHITE_SPACE};
