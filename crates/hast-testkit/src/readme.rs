//! README.md's fenced `sh` blocks, for the tests that run them as printed
//! (tests/README.md's table maps each block to its test): a block is found
//! by its first line, so a test breaks loudly if the README's command
//! changes under it, and only named strings (paths, ports) are replaced.

use crate::env::repo_root;

/// The body of README.md's one ```` ```sh ```` block whose first line starts
/// with `first_line`, without the fences. Panics if there is none or more
/// than one, so a test never runs some other block.
pub fn sh_block(first_line: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let found = sh_blocks(&readme)
        .into_iter()
        .filter(|b| b.lines().next().is_some_and(|l| l.starts_with(first_line)))
        .collect::<Vec<_>>();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!("README.md has no ```sh block whose first line starts with {first_line:?}"),
        many => panic!(
            "README.md has {} ```sh blocks starting with {first_line:?}",
            many.len()
        ),
    }
}

/// Every ```` ```sh ```` block of `markdown`, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.starts_with("```") => blocks.extend(current.take()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    blocks
}

/// `block` with each `(printed, ours)` replaced everywhere; panics if a
/// `printed` string is not in it (the README changed: the test must too).
pub fn substitute(block: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = block.to_string();
    for (printed, ours) in replacements {
        assert!(
            out.contains(printed),
            "the README block no longer names {printed:?}:\n{block}"
        );
        out = out.replace(printed, ours);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_found_by_their_first_line() {
        let md = "text\n```sh\nfirst one\nsecond\n```\n```text\nnot sh\n```\n```sh\nother\n```\n";
        assert_eq!(sh_blocks(md), ["first one\nsecond\n", "other\n"]);
        // The README's own blocks: the recipe tests/quickstart.rs runs.
        assert!(sh_block("mkdir -p /mnt/x").contains("mkfs.ext4"));
    }

    #[test]
    #[should_panic(expected = "no longer names")]
    fn a_missing_string_is_a_failure() {
        substitute("echo a\n", &[("b", "c")]);
    }
}
