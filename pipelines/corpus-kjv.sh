#!/usr/bin/env bash
# Prints the King James Bible (Debian package bible-kjv) as one paragraph per chapter: the
# chapter heading ("Genesis 1") followed by its verses, chapters separated by a blank line.
# 1189 chapters, about 4.3 MB. Used with llm-tokenize --document-boundary blank-line.
set -euo pipefail
command -v bible > /dev/null || { echo "corpus-kjv.sh: 'bible' not found (apt-get install bible-kjv)" >&2; exit 1; }
bible Gen1:1-Rev22:21 | awk '
  /^[1-3]? ?[A-Z][A-Za-z ]* [0-9]+$/ { if (n++) print ""; print; next }
  /^$/ { next }
  { print }'
