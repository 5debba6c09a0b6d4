# Writes the bytes of IN as a C array: cmake -DIN=FILE -DOUT=FILE.c -DNAME=SYMBOL -P embed.cmake
# The array ends in a NUL, so that it is also a C string (a text file holds none of its own).
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n        " bytes "${bytes}")
get_filename_component(base "${IN}" NAME)
file(WRITE "${OUT}.tmp" "/* Generated from ${base} by cmake/embed.cmake: do not edit. */\n"
                        "const char ${NAME}[] = {\n        ${bytes}0x00\n};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
