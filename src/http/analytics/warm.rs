//! Cache warming: a request is remembered as a [`Recipe`] (its parameters in canonical order, dates
//! that end today or later relative to today) and asked again by [`warm_one`] after start and each
//! rollover (`STRATA_CACHE_WARM`).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use super::{overview_hit, summary_hit, timeline_hit};
use crate::cache::Recipe;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::query::apps::find_app;
use crate::query::params::{parse_date, parse_tz, Filter, Params, RangeDefault, TimelineRequest};

/// The remembered form of a request, for warming: its parameters in canonical order; when the range
/// ends today or later (in its zone), its dates relative to today (`@{days}`), so that the same
/// dashboard is warmed after the day rolls over.
pub(super) fn recipe(
    endpoint: &str,
    path: Option<&str>,
    p: &Params,
    names: &[(&'static str, &'static str)],
    tz: Tz,
) -> Option<Recipe> {
    let today = Utc::now().with_timezone(&tz).date_naive();
    let rolling = p.get("endDate", "end_date").ok().flatten().and_then(parse_date).is_some_and(|end| end >= today);
    let mut params = Vec::with_capacity(names.len());
    for &(name, alias) in names {
        let Some(v) = p.get(name, alias).ok().flatten() else { continue };
        let v = match parse_date(v) {
            Some(day) if rolling && matches!(name, "startDate" | "endDate") => format!("@{}", (day - today).num_days()),
            _ => v.to_owned(),
        };
        params.push((name.to_owned(), v));
    }
    Some(Recipe { endpoint: endpoint.to_owned(), path: path.map(str::to_owned), params })
}

/// The recipe's parameters as a request at `now` would send them.
fn materialise(r: &Recipe, now: DateTime<Utc>) -> Result<Params, ApiError> {
    let tz = parse_tz(r.params.iter().find(|(k, _)| k == "tz").map(|(_, v)| v.as_str()))?;
    let today = now.with_timezone(&tz).date_naive();
    let mut pairs = Vec::with_capacity(r.params.len());
    for (k, v) in &r.params {
        let v = match v.strip_prefix('@').map(str::parse::<i64>) {
            Some(Ok(days)) => today
                .checked_add_signed(chrono::Duration::days(days))
                .ok_or_else(|| ApiError::bad_request("invalid_parameter", "a remembered date is out of range"))?
                .format("%Y-%m-%d")
                .to_string(),
            _ => v.clone(),
        };
        pairs.push((k.clone(), v));
    }
    Ok(Params::new(pairs))
}

/// Asks `recipe` of `app` again into the cache (cache warming); false when it could not. Apps deleted
/// meanwhile are skipped.
pub async fn warm_one(s: AppState, app: Uuid, recipe: Recipe) -> bool {
    match warm_recipe(&s, app, &recipe).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%app, endpoint = %recipe.endpoint, code = e.code, message = %e.message, "could not warm a query");
            false
        }
    }
}

async fn warm_recipe(s: &AppState, app: Uuid, r: &Recipe) -> Result<(), ApiError> {
    if find_app(&s.pool, app).await?.is_none() {
        return Ok(());
    }
    let now = Utc::now();
    let p = materialise(r, now)?;
    match (r.endpoint.as_str(), r.path.as_deref()) {
        ("timeline", _) => {
            timeline_hit(s, app, &TimelineRequest::parse(&p, now, s.cfg.max_buckets)?, true).await.map(drop)?
        }
        ("summary", _) => {
            summary_hit(s, app, &Filter::parse(&p, now, RangeDefault::LastDays)?, true).await.map(drop)?
        }
        ("overview", _) => {
            overview_hit(s, app, &Filter::parse(&p, now, RangeDefault::AllTime)?, true).await.map(drop)?
        }
        _ => return Err(ApiError::bad_request("invalid_parameter", "unknown remembered query")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::analytics::{FILTER_PARAMS, TIMELINE_PARAMS};

    fn pairs(p: &[(&str, &str)]) -> Params {
        Params::new(p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn ranges_through_today_are_remembered_relative_to_today_and_others_as_given() {
        let today = Utc::now().date_naive();
        let day = |n: i64| (today + chrono::Duration::days(n)).format("%Y-%m-%d").to_string();
        let rolling = pairs(&[("appId", "x"), ("start_date", &day(-89)), ("endDate", &day(0)), ("interval", "day")]);
        let r = recipe("timeline", None, &rolling, TIMELINE_PARAMS, Tz::UTC).unwrap();
        let expected = [("startDate", "@-89"), ("endDate", "@0"), ("interval", "day")];
        assert_eq!(r.params, expected.map(|(k, v)| (k.to_string(), v.to_string())));

        let closed = pairs(&[("startDate", "2026-01-01"), ("endDate", "2026-01-31"), ("tz", "Europe/Berlin")]);
        let r = recipe("summary", None, &closed, FILTER_PARAMS, chrono_tz::Europe::Berlin).unwrap();
        let expected = [("tz", "Europe/Berlin"), ("startDate", "2026-01-01"), ("endDate", "2026-01-31")];
        assert_eq!(r.params, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn a_remembered_rolling_range_moves_with_the_day() {
        let r = Recipe {
            endpoint: "timeline".into(),
            path: None,
            params: vec![("startDate".into(), "@-89".into()), ("endDate".into(), "@0".into())],
        };
        let p = materialise(&r, "2026-11-27T00:00:01Z".parse().unwrap()).unwrap();
        assert_eq!(p.get("startDate", "start_date").unwrap(), Some("2026-08-30"));
        assert_eq!(p.get("endDate", "end_date").unwrap(), Some("2026-11-27"));
    }
}
