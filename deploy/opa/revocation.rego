# OPA policy that asks ssf-hub whether the caller's token is still good.
#
# input (e.g. from OPA-Envoy or an API gateway plugin) carries the verified token claims:
#   {"token": {"iss": "...", "sub": "...", "sid": "...", "iat": 1767225600, "device_id": "..."}}
# The device comes from the verified token's `device_id` claim, never from a request header a
# client could set.
# The hub answers {"allow": bool, "reason": "...", "position": N} from memory.
# Configure the hub URL and a credential with the revocation scope (from
# `ssf-hub receivers add ... --scope revocations.read`) as OPA data:
#   {"ssf_hub": {"url": "http://ssf-hub:8080", "token": "ssfhub_..."}}
package ssf_hub.revocation

import rego.v1

default allow := false

check_body := body if {
	body := object.union(
		{"iss": input.token.iss, "sub": input.token.sub, "iat": input.token.iat},
		object.union(
			{k: v | k := "session_id"; v := input.token.sid},
			{k: v | k := "device_id"; v := input.token.device_id},
		),
	)
}

decision := http.send({
	"method": "POST",
	"url": concat("", [data.ssf_hub.url, "/revocations/check"]),
	"headers": {
		"Authorization": concat(" ", ["Bearer", data.ssf_hub.token]),
		"Content-Type": "application/json",
	},
	"body": check_body,
	"timeout": "250ms",
	# Decisions change the moment a revocation arrives: never cache them.
	"cache": false,
	"raise_error": false,
})

allow if {
	decision.status_code == 200
	decision.body.allow == true
}

# Why a request was denied, for logs and responses.
reason := decision.body.reason if decision.status_code == 200
reason := "hub_unavailable" if decision.status_code != 200
