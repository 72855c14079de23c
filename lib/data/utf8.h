// UTF-8 validation and repair for tokenizer input.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace llm {

// Offset of the first byte that is not part of a well-formed UTF-8 sequence (overlongs,
// surrogates and code points above U+10FFFF are ill-formed), or npos when all is valid.
size_t find_invalid_utf8(std::string_view s);
// Replaces each maximal ill-formed subsequence with U+FFFD (the Unicode/WHATWG practice, which
// is also what JavaScript's TextDecoder does). Returns the number of replacements.
size_t replace_invalid_utf8(std::string& s);
// Appends the UTF-8 encoding of code point cp (<= U+10FFFF; surrogates are the caller's concern).
void append_utf8(std::string& out, uint32_t cp);

}  // namespace llm
