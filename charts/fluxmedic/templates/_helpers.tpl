{{- define "fluxmedic.labels" -}}
app.kubernetes.io/name: fluxmedic
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- define "fluxmedic.selector" -}}
app.kubernetes.io/name: fluxmedic
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "fluxmedic.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}
