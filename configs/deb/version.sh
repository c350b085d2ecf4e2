#!/bin/sh
# Prints a Debian package version for the git version $1 (git describe
# --tags --always --dirty): Debian versions must start with a digit.
#   v1.2.3            -> 1.2.3
#   v1.2.3-4-gabcdef  -> 1.2.3+4.gabcdef   (sorts after 1.2.3)
#   abcdef[-dirty]    -> 0.0.0~git<commit count>.abcdef[.dirty]
v=$1
case "$v" in
v[0-9]*)
	echo "${v#v}" | sed -e 's/-\([0-9][0-9]*\)-g/+\1.g/' -e 's/-dirty$/.dirty/'
	;;
*)
	n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
	echo "0.0.0~git$n.$(echo "$v" | tr -- - .)"
	;;
esac
