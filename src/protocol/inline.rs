//! Inline commands, as typed in telnet: one line, arguments split on spaces,
//! with the quoting rules of Redis's `sdssplitargs`.

use bytes::Bytes;

use super::ProtocolError;

/// Splits one inline line (its line ending included) into arguments.
/// Redis answers "unbalanced quotes in request" for a bad quote; so do we.
pub fn split_args(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    let mut args = Vec::new();
    let mut index = 0;
    loop {
        while index < line.len() && is_space(line[index]) {
            index += 1;
        }
        if index >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&byte) = line.get(index) else {
                if in_double || in_single {
                    return Err(unbalanced());
                }
                break;
            };
            if in_double {
                if byte == b'\\'
                    && index + 3 < line.len()
                    && line[index + 1] == b'x'
                    && let (Some(high), Some(low)) = (hex(line[index + 2]), hex(line[index + 3]))
                {
                    current.push(high * 16 + low);
                    index += 4;
                    continue;
                }
                if byte == b'\\' && index + 1 < line.len() {
                    current.push(match line[index + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    index += 2;
                    continue;
                }
                if byte == b'"' {
                    // A closing quote must be followed by a space or the end.
                    if index + 1 < line.len() && !is_space(line[index + 1]) {
                        return Err(unbalanced());
                    }
                    index += 1;
                    break;
                }
                current.push(byte);
            } else if in_single {
                if byte == b'\\' && line.get(index + 1) == Some(&b'\'') {
                    current.push(b'\'');
                    index += 2;
                    continue;
                }
                if byte == b'\'' {
                    if index + 1 < line.len() && !is_space(line[index + 1]) {
                        return Err(unbalanced());
                    }
                    index += 1;
                    break;
                }
                current.push(byte);
            } else {
                match byte {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            index += 1;
        }
        args.push(Bytes::from(current));
    }
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c)
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<String> {
        split_args(line.as_bytes())
            .unwrap()
            .into_iter()
            .map(|a| String::from_utf8_lossy(&a).into_owned())
            .collect()
    }

    #[test]
    fn splits_on_whitespace() {
        assert_eq!(split("SET  a   b\r\n"), ["SET", "a", "b"]);
    }

    #[test]
    fn quotes_and_escapes_follow_sdssplitargs() {
        assert_eq!(split("SET k \"a b\\n\\x41\"\r\n"), ["SET", "k", "a b\nA"]);
        assert_eq!(split("SET k 'it\\'s'\n"), ["SET", "k", "it's"]);
        assert_eq!(split("SET k \"\"\n"), ["SET", "k", ""]);
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        for line in ["SET k \"abc\r\n", "SET k 'abc\r\n", "SET k \"a\"b\r\n"] {
            assert_eq!(
                split_args(line.as_bytes()).unwrap_err().message(),
                "unbalanced quotes in request"
            );
        }
    }
}
