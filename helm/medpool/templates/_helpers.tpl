{{/*
Names. The StatefulSet's pods are <fullname>-<ordinal>; medpool derives its node id from that
hostname (HOSTNAME is set to the pod name below) and, for ordinals > 0, joins <fullname>-0 through
the headless peers Service.
*/}}
{{- define "medpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "medpool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "medpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "medpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "medpool.labels" -}}
helm.sh/chart: {{ include "medpool.chart" . }}
{{ include "medpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medpool
{{- end }}

{{/* The headless Service that gives every pod a stable DNS name. */}}
{{- define "medpool.peersService" -}}
{{- printf "%s-peers" (include "medpool.fullname" .) }}
{{- end }}

{{- define "medpool.sipService" -}}
{{- printf "%s-sip" (include "medpool.fullname" .) }}
{{- end }}

{{- define "medpool.adminService" -}}
{{- printf "%s-admin" (include "medpool.fullname" .) }}
{{- end }}

{{- define "medpool.configMapName" -}}
{{- default (printf "%s-config" (include "medpool.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{- define "medpool.tokenSecretName" -}}
{{- default (printf "%s-admin" (include "medpool.fullname" .)) .Values.admin.token.existingSecret }}
{{- end }}

{{/* The per-node internal TLS Secrets are <prefix>-<ordinal>. */}}
{{- define "medpool.internalTlsPrefix" -}}
{{- default (printf "%s-internal-tls" (include "medpool.fullname" .)) .Values.internalTls.existingSecretPrefix }}
{{- end }}

{{/* Where each pod finds the internal TLS files: <dir>/<pod name>/{tls.crt,tls.key,ca.crt}. */}}
{{- define "medpool.internalTlsDir" -}}
/etc/medpool/internal-tls
{{- end }}

{{/* The key of the viewer token in the token Secret. */}}
{{- define "medpool.viewerTokenKey" -}}
{{- ternary .Values.admin.viewerToken.existingSecretKey "viewer-token" (not (empty .Values.admin.token.existingSecret)) }}
{{- end }}

{{- define "medpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "medpool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "medpool.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The peer domain: <fullname>-peers.<namespace>.svc.<clusterDomain>. $(POD_NAMESPACE) is expanded by
the kubelet from the env var defined before it.
*/}}
{{- define "medpool.peerDomain" -}}
{{- printf "%s.$(POD_NAMESPACE).svc.%s" (include "medpool.peersService" .) .Values.clusterDomain }}
{{- end }}

{{/* The node's own admin API, for `medpool ctl` in the hooks (token and TLS settings from the env). */}}
{{- define "medpool.adminLocal" -}}
{{- printf "%s127.0.0.1:%d" (ternary "https://" "" .Values.admin.tls.enabled) (int .Values.admin.port) }}
{{- end }}

{{/* The SIP address nodes advertise (Via/Contact): the SIP Service unless set. */}}
{{- define "medpool.sipAdvertise" -}}
{{- if .Values.sip.advertise }}
{{- .Values.sip.advertise }}
{{- else if .Values.hostNetwork.enabled }}
{{- printf "$(HOST_IP):%d" (int .Values.sip.port) }}
{{- else }}
{{- printf "%s.$(POD_NAMESPACE).svc.%s:%d" (include "medpool.sipService" .) .Values.clusterDomain (int .Values.sip.port) }}
{{- end }}
{{- end }}

{{/*
The media relay's advertised address, as the container's environment spells it.
*/}}
{{- define "medpool.mediaAdvertise" -}}
{{- $a := .Values.media.advertise | default (ternary "hostIP" "podIP" .Values.hostNetwork.enabled) }}
{{- if eq $a "podIP" }}$(POD_IP){{ else if eq $a "hostIP" }}$(HOST_IP){{ else }}{{ $a }}{{ end }}
{{- end }}

{{/*
The relay's port range: a list of two ints, low and high.
*/}}
{{- define "medpool.mediaPorts" -}}
{{- $r := splitList "-" .Values.media.ports }}
{{- printf "%d %d" (index $r 0 | int) (index $r 1 | int) }}
{{- end }}

{{/*
Checks that cannot be expressed in values.schema.json. They fail the render with a message.
*/}}
{{- define "medpool.validate" -}}
{{- /* + 8 s: after its grace, medpool writes out its last dialog records (3 s at most) and stops Raft (5 s). */}}
{{- $budget := add .Values.drain.timeoutSeconds .Values.shutdownGraceSeconds 8 }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $budget) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than drain.timeoutSeconds + shutdownGraceSeconds + 8 s of final writes (%d): the kubelet would kill the node in the middle of its drain" (int .Values.terminationGracePeriodSeconds) (int $budget)) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: there is no metrics port to scrape" }}
{{- end }}
{{- if and .Values.admin.tls.enabled (not .Values.admin.tls.existingSecret) }}
{{- fail "admin.tls.enabled needs admin.tls.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and (not .Values.admin.token.create) (not .Values.admin.token.existingSecret) }}
{{- fail "the admin API listens beyond loopback in a pod and needs a token: set admin.token.create=true or admin.token.existingSecret" }}
{{- end }}
{{- if and .Values.admin.token.existingSecret .Values.admin.token.value }}
{{- fail "admin.token.value and admin.token.existingSecret exclude each other" }}
{{- end }}
{{- if and .Values.admin.token.existingSecret .Values.admin.viewerToken.value }}
{{- fail "admin.viewerToken.value and admin.token.existingSecret exclude each other (put the viewer token in that Secret, key admin.viewerToken.existingSecretKey)" }}
{{- end }}
{{- if and .Values.admin.viewerToken.value (eq .Values.admin.viewerToken.value .Values.admin.token.value) }}
{{- fail "admin.viewerToken.value must differ from admin.token.value (a viewer would be an admin)" }}
{{- end }}
{{- if and .Values.internalTls.certManager.enabled (not .Values.internalTls.enabled) }}
{{- fail "internalTls.certManager.enabled needs internalTls.enabled: the certificates would not be used" }}
{{- end }}
{{- if and .Values.internalTls.enabled .Values.internalTls.certManager.enabled (not .Values.internalTls.certManager.issuerRef.name) }}
{{- fail "internalTls.certManager.issuerRef.name is required with internalTls.certManager.enabled (a cert-manager CA Issuer dedicated to this pool)" }}
{{- end }}
{{- if and .Values.pdb.enabled (gt (int .Values.pdb.maxUnavailable) (div (sub (int .Values.voters) 1) 2)) }}
{{- fail (printf "pdb.maxUnavailable (%d) exceeds what %d voters survive (%d): a voluntary disruption could take the pool's quorum" (int .Values.pdb.maxUnavailable) (int .Values.voters) (div (sub (int .Values.voters) 1) 2)) }}
{{- end }}
{{- if and .Values.sip.tls.enabled (not .Values.sip.tls.existingSecret) }}
{{- fail "sip.tls.enabled needs sip.tls.existingSecret (a Secret with tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- $sipPorts := list (int .Values.sip.port) }}
{{- if .Values.sip.tls.enabled }}{{- $sipPorts = append $sipPorts (int .Values.sip.tls.port) }}{{- end }}
{{- range .Values.sip.trunkPorts }}
{{- if has (int .) $sipPorts }}
{{- fail (printf "sip.trunkPorts: %d is already the pod's SIP port (a trunk's local_port needs a port of its own)" (int .)) }}
{{- end }}
{{- if has (int .) (list (int $.Values.internal.port) (int $.Values.admin.port) (int $.Values.metrics.port)) }}
{{- fail (printf "sip.trunkPorts: %d is already one of the pod's ports" (int .)) }}
{{- end }}
{{- if $.Values.media.enabled }}
{{- $m := splitList " " (include "medpool.mediaPorts" $) }}
{{- if and (ge (int .) (index $m 0 | int)) (le (int .) (index $m 1 | int)) }}
{{- fail (printf "sip.trunkPorts: %d lies in media.ports (%s)" (int .) $.Values.media.ports) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.media.enabled }}
{{- $m := splitList " " (include "medpool.mediaPorts" .) }}
{{- if gt (index $m 0 | int) (index $m 1 | int) }}
{{- fail (printf "media.ports (%s): LOW must not be above HIGH" .Values.media.ports) }}
{{- end }}
{{- range list (int .Values.sip.port) (int .Values.internal.port) (int .Values.admin.port) (int .Values.metrics.port) }}
{{- if and (ge . (index $m 0 | int)) (le . (index $m 1 | int)) }}
{{- fail (printf "media.ports (%s) must not hold the pod's port %d" $.Values.media.ports .) }}
{{- end }}
{{- end }}
{{- end }}
{{- $ports := list (int .Values.sip.port) (int .Values.internal.port) (int .Values.admin.port) }}
{{- if .Values.metrics.enabled }}{{ $ports = append $ports (int .Values.metrics.port) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "sip.port, internal.port, admin.port and metrics.port must differ (got %v)" $ports) }}
{{- end }}
{{- end }}

{{/*
The preStop hook: drain this node and wait until it owns no shard (its calls now live on the other
nodes), at most drain.timeoutSeconds, with `medpool ctl node drain --wait` (exit 0 once the node owns
no shard; the drain is idempotent, so a failed attempt is simply repeated). It never fails the hook:
the kubelet sends SIGTERM afterwards anyway, and medpool's own shutdown lets what is left finish. Its
output goes to the container's log when PID 1 is medpool (the image's entrypoint).
Runs with the container's environment: POD_NAME (<fullname>-<ordinal>; the node id is the ordinal), and
MEDPOOL_ADMIN_TOKEN for the admin API.
*/}}
{{- define "medpool.drainScript" -}}
if [ "$(cat /proc/1/comm 2>/dev/null)" = medpool ]; then exec >>/proc/1/fd/2 2>&1; fi
id="${MEDPOOL_NODE_ID:-${POD_NAME##*-}}"
deadline=$(( $(date +%s) + {{ int .Values.drain.timeoutSeconds }} ))
echo "preStop: draining node ${id}"
while :; do
  left=$(( deadline - $(date +%s) ))
  if [ "${left}" -le 0 ]; then echo "preStop: node ${id} not drained after {{ int .Values.drain.timeoutSeconds }} s"; exit 0; fi
  if timeout "${left}" medpool ctl --server {{ include "medpool.adminLocal" . }} --timeout "${left}" node drain "${id}" --wait; then
    echo "preStop: node ${id} drained (no shard left)"; exit 0
  fi
  sleep 1
done
{{- end }}

{{/*
The postStart hook: make this node active again (undo the drain of its preStop hook), retrying
until the pool knows the node and has a leader, at most drain.timeoutSeconds. The nodes that join
through <fullname>-0 are made active by their join; the bootstrap node 0 is not (its restart does
not rejoin), so without this it would stay drained after a rolling restart.
*/}}
{{- define "medpool.undrainScript" -}}
if [ "$(cat /proc/1/comm 2>/dev/null)" = medpool ]; then exec >>/proc/1/fd/2 2>&1; fi
id="${MEDPOOL_NODE_ID:-${POD_NAME##*-}}"
deadline=$(( $(date +%s) + {{ int .Values.drain.timeoutSeconds }} ))
until medpool ctl --server {{ include "medpool.adminLocal" . }} node undrain "${id}" >/dev/null 2>&1; do
  if [ "$(date +%s)" -ge "${deadline}" ]; then echo "postStart: node ${id} could not be made active"; exit 0; fi
  sleep 1
done
echo "postStart: node ${id} active"
{{- end }}
