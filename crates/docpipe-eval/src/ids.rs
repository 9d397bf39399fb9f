//! DocVQA ids are integers in the official files but strings in some hub copies and
//! submissions; both are accepted wherever an id is read.

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Int(i64),
    Text(String),
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    match Id::deserialize(deserializer) {
        Ok(Id::Int(id)) => Ok(id),
        Ok(Id::Text(text)) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("id {text:?} is not an integer"))),
        Err(_) => Err(serde::de::Error::custom(
            "id must be an integer or a string of digits",
        )),
    }
}
